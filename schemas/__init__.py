"""Pure data shared by every part of the system: manifests, policies, events, tables, errors. No I/O here."""
