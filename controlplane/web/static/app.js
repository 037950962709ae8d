// CardVault pages: small progressive enhancements (every page also works without this file).
// No inline scripts or eval: the Content-Security-Policy allows only this file and htmx.
(function () {
  "use strict";

  // Destructive forms ask to type the tenant's slug: <form data-confirm="acme"> with an input named
  // "confirm". The submit button stays disabled until it matches (the server checks it again).
  function wireConfirm(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      var input = form.querySelector("input[name=confirm]");
      var button = form.querySelector("button[type=submit]");
      if (!input || !button || form.dataset.wired) return;
      form.dataset.wired = "1";
      var update = function () { button.disabled = input.value.trim() !== form.dataset.confirm; };
      input.addEventListener("input", update);
      update();
    });
  }

  // A <select data-navigate> jumps to the chosen option's value (a URL) on change.
  function wireNavigate(root) {
    root.querySelectorAll("select[data-navigate]").forEach(function (select) {
      if (select.dataset.wired) return;
      select.dataset.wired = "1";
      select.addEventListener("change", function () { if (select.value) window.location.assign(select.value); });
    });
  }

  // Close an open <details class="switcher"> with Escape or a click elsewhere.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    document.querySelectorAll("details[open]").forEach(function (d) { d.removeAttribute("open"); d.querySelector("summary").focus(); });
  });
  document.addEventListener("click", function (event) {
    document.querySelectorAll("details.switcher[open]").forEach(function (d) { if (!d.contains(event.target)) d.removeAttribute("open"); });
  });

  function wire(root) { wireConfirm(root); wireNavigate(root); }
  document.addEventListener("DOMContentLoaded", function () { wire(document); });
  document.addEventListener("htmx:afterSwap", function (event) { wire(event.target); });
})();
