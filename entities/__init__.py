"""The four X.1368 entities (author, firmware server, status tracker, firmware consumer) and the CLI."""
