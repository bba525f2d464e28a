package ami

// securityEvents are the names of the events Asterisk raises in the
// security class (main/security_events.c). Decode takes every one of them,
// those without a SecurityType of their own as SecOther.
var securityEvents = []string{
	"FailedACL", "InvalidAccountID", "SessionLimit", "MemoryLimit", "LoadAverageLimit",
	"RequestNotSupported", "RequestNotAllowed", "AuthMethodNotAllowed", "RequestBadFormat",
	"SuccessfulAuth", "UnexpectedAddress", "ChallengeResponseFailed", "InvalidPassword",
	"ChallengeSent", "InvalidTransport",
}

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
	for _, s := range securityEvents {
		if equalFold(name, s) {
			return true
		}
	}
	return false
}
