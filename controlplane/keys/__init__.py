"""Master-key rotation: every secret the control plane stores, re-encrypted under the current key."""
