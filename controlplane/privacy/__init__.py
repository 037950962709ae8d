"""GDPR: tenant and per-user exports, user erasure, deletion certificates, audit retention."""
