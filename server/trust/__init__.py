"""Trust and safety: content credentials (C2PA signing, the IPTC source types) and
moderation in CLIP space (docs/trust.md)."""
