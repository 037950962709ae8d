"""Self-serve onboarding: signup, email verification, the onboarding checklist."""
