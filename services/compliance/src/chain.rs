//! The hash chain: what is hashed and how, so anyone holding the events can verify the log.
//!
//! Chain version 1: `hash = SHA-256(previous_hash || canonical_bytes)`, where the canonical
//! bytes are the protobuf encoding of the `AuditEvent` with its output-only fields (`name`,
//! `sequence`, `hash`, `previous_hash`) cleared. Prost encodes fields in field-number order and
//! `attributes` is a sorted map, so the encoding is deterministic. The first event of a tenant
//! chains from [`GENESIS_HASH`].

use palisade_proto::palisade::compliance::v1::AuditEvent;
use prost::Message;
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: [u8; 32] = [0; 32];

pub fn canonical_bytes(event: &AuditEvent) -> Vec<u8> {
    let canonical = AuditEvent {
        name: String::new(),
        sequence: 0,
        hash: Vec::new(),
        previous_hash: Vec::new(),
        // Personal data lives beside the chain so that erasing it leaves the chain whole.
        origin: None,
        ..event.clone()
    };
    canonical.encode_to_vec()
}

pub fn chain_hash(previous_hash: &[u8], canonical: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(previous_hash);
    hasher.update(canonical);
    hasher.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_fields_do_not_change_the_canonical_bytes() {
        let event = AuditEvent {
            event_id: "e1".into(),
            action: "a".into(),
            ..AuditEvent::default()
        };
        let stored = AuditEvent {
            sequence: 9,
            hash: vec![1],
            name: "x".into(),
            ..event.clone()
        };
        assert_eq!(canonical_bytes(&event), canonical_bytes(&stored));
    }

    #[test]
    fn any_change_changes_the_hash() {
        let event = AuditEvent {
            event_id: "e1".into(),
            action: "a".into(),
            ..AuditEvent::default()
        };
        let tampered = AuditEvent {
            action: "b".into(),
            ..event.clone()
        };
        let original = chain_hash(&GENESIS_HASH, &canonical_bytes(&event));
        assert_ne!(
            original,
            chain_hash(&GENESIS_HASH, &canonical_bytes(&tampered))
        );
        assert_ne!(original, chain_hash(&[1; 32], &canonical_bytes(&event)));
    }
}
