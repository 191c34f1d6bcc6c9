"""FairUnlock service: HTTP API, flows, persistence and adapters around policy/ and audit/."""
