"""FairUnlock service: HTTP API, flows, persistence and adapters around the pure policy/ and audit/ cores."""
