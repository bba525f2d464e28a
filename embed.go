// Package astguard holds data the guard binary carries: the recorded
// Asterisk 20 attack that `guard demo` replays.
package astguard

import _ "embed"

// AttackTranscript is testdata/transcripts/attack-mixed.ami: a real Asterisk
// 20 recording of a stolen chan_sip extension, a stolen PJSIP endpoint, a
// password-guessing address and a legitimate user at once.
//
//go:embed testdata/transcripts/attack-mixed.ami
var AttackTranscript []byte
