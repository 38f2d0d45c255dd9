// Package envelope seals and opens sealrun queue messages.
//
// Two suites share a queue and are told apart from the body:
//
//   - StudioML (spec studioml-format.md §1–§5): RSA-OAEP-SHA256 wraps a 32-byte
//     NaCl secretbox key; the payload string is signed with Ed25519. Byte for
//     byte what the StudioML Python client writes and its consumers read.
//   - HPKE (spec §7): RFC 9180 with ML-KEM-768+X25519 (default) or
//     DHKEM(X25519), HKDF-SHA256 and ChaCha20-Poly1305; a signed header binds
//     suite, key id, queue, message id and creation time, and a ReplayGuard
//     rejects replays inside a window.
//
// Every failure wraps one of the sentinel errors below so callers can tell a
// message that can never succeed (Permanent) from one worth retrying.
package envelope
