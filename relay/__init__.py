"""sms-relay: an SMTP server that turns e-mail into SMS over SMPP 3.4."""

__version__ = "0.1.0"
