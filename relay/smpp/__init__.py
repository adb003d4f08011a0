"""The SMPP 3.4 upstream: PDU codec, session, connection with window and reconnect, simulator."""
