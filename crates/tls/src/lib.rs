//! Dev PKI, rustls configs with certificate reload, SPIFFE peer identity and mTLS transports.
