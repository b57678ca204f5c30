"""The audit trail, streamed out of Redis to SIEMs: `http` (plain or Splunk HEC), `syslog` (RFC 5424
over TCP or TLS), `file`; at least once and in order per sink, from a cursor kept in Redis."""
