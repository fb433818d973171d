//! The hash chain: what is hashed and how, so anyone holding the events can verify the log.
//!
//! Chain version 1: `hash = SHA-256(previous_hash || canonical_bytes)`, where the canonical
//! bytes are the protobuf encoding of the `AuditEvent` with its output-only fields (`name`,
//! `sequence`, `hash`, `previous_hash`, `origin`) cleared. Prost encodes fields in field-number
//! order and `attributes` is a sorted map, so the encoding is deterministic. The first event of
//! a tenant chains from [`GENESIS_HASH`].
//!
//! Events are appended without attributes that have an empty key or value
//! ([`without_empty_attributes`]): prost writes a map entry without its empty half, where most
//! other encoders (upb, C++, Go, Java) write both, so such an entry would give verifiers in
//! other languages other bytes. Events stored before that rule keep theirs, and
//! [`canonical_bytes`] (plain prost) still reproduces their hash.

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

/// `event` as it is appended: without attributes whose key or value is empty, which say
/// nothing an absent one does not and which encoders disagree on.
pub fn without_empty_attributes(event: &AuditEvent) -> AuditEvent {
    AuditEvent {
        attributes: (event.attributes.iter())
            .filter(|(key, value)| !key.is_empty() && !value.is_empty())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        ..event.clone()
    }
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
    fn empty_attributes_are_left_out_and_entries_are_written_whole() {
        let event = |attributes: &[(&str, &str)]| AuditEvent {
            event_id: "e1".into(),
            attributes: (attributes.iter())
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..AuditEvent::default()
        };
        let appended = without_empty_attributes(&event(&[("roles", ""), ("", "x"), ("b", "y")]));
        let bytes = canonical_bytes(&appended);
        assert_eq!(bytes, canonical_bytes(&event(&[("b", "y")])));
        // The one entry as any encoder writes it: field 11, key (field 1) and value (field 2).
        let entry = [0x5a, 6, 0x0a, 1, b'b', 0x12, 1, b'y'];
        assert!(bytes.ends_with(&entry), "{bytes:02x?}");
    }

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
