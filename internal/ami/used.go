package ami

// UsedEvent reports whether Decode may turn an event of this name (ASCII
// case ignored) into an Event: the names it knows, and the security events of
// Asterisk. Every other event is one the guard does not use, so a reader can
// skip it unread: `ReaderOptions{Skip: func(n []byte) bool { return !UsedEvent(n) }}`.
//
// Decode also takes an event of any other name whose Privilege is in the
// security class; Asterisk raises none, so UsedEvent does not wait to see
// the Privilege header.
func UsedEvent(name []byte) bool {
	if k, _ := eventKind(name); k != KindUnknown {
		return true
	}
	var buf [24]byte
	if len(name) > len(buf) {
		return false
	}
	for i, c := range name {
		buf[i] = lower(c)
	}
	// The events Asterisk raises in the security class
	// (main/security_events.c), which Decode takes, those without a
	// SecurityType of their own as SecOther.
	switch string(buf[:len(name)]) {
	case "failedacl", "invalidaccountid", "sessionlimit", "memorylimit", "loadaveragelimit",
		"requestnotsupported", "requestnotallowed", "authmethodnotallowed", "requestbadformat",
		"successfulauth", "unexpectedaddress", "challengeresponsefailed", "invalidpassword",
		"challengesent", "invalidtransport":
		return true
	}
	return false
}
