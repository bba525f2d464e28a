package ami

import (
	"net/netip"
	"time"
)

// Kind says which of the events the guard understands a message is.
type Kind uint8

// The event kinds the guard needs. Everything else decodes as KindUnknown and
// is dropped without allocating.
const (
	KindUnknown       Kind = iota
	KindNewchannel         // Newchannel: a channel was created
	KindDialBegin          // DialBegin (12+) or Dial with SubEvent: Begin (1.8/11)
	KindDialEnd            // DialEnd (12+) or Dial with SubEvent: End (1.8/11)
	KindHangup             // Hangup, with Cause
	KindSecurity           // a security event (InvalidPassword, FailedACL, SuccessfulAuth, ...)
	KindPeerStatus         // chan_sip/IAX2 PeerStatus: an address Asterisk saw
	KindContactStatus      // PJSIP ContactStatus: a client-supplied contact
	KindFullyBooted        // FullyBooted: the session is ready
)

var kindNames = [...]string{"Unknown", "Newchannel", "DialBegin", "DialEnd", "Hangup", "Security", "PeerStatus", "ContactStatus", "FullyBooted"}

// String returns the kind's name, e.g. DialBegin.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(?)"
}

// SecurityType is the type of a security event (its Event: name).
type SecurityType uint8

// Security event types the guard distinguishes.
const (
	SecOther SecurityType = iota
	SecInvalidAccountID
	SecFailedACL
	SecInvalidPassword
	SecChallengeResponseFailed
	SecChallengeSent
	SecSuccessfulAuth
	SecRequestNotAllowed
	SecRequestBadFormat
)

var secNames = [...]string{"Other", "InvalidAccountID", "FailedACL", "InvalidPassword", "ChallengeResponseFailed", "ChallengeSent", "SuccessfulAuth", "RequestNotAllowed", "RequestBadFormat"}

// String returns the type's event name, e.g. InvalidPassword, or Other.
func (s SecurityType) String() string {
	if int(s) < len(secNames) {
		return secNames[s]
	}
	return "SecurityType(?)"
}

// Event is a decoded AMI event, flat so that the detector can take it by
// pointer without interface boxing. Only the fields of its Kind are set.
// Strings in an Event own their memory (they do not alias reader buffers).
type Event struct {
	Kind Kind
	// Time is the event time: from the transcript's TimeReceived, else
	// EventTV, else the Uniqueid epoch, else the previous event's time. The
	// live guard sets it to the time it read the message.
	Time time.Time
	// Seq is the 1-based position of the message in its stream, counting
	// every message after the banner (the login response included).
	Seq int

	// Channel events (Newchannel, Dial*, Hangup): the caller's snapshot.
	Channel     string
	Uniqueid    string
	Linkedid    string
	Exten       string
	Context     string
	CallerIDNum string
	// Dial events: the outbound leg and the dial string / status.
	DestChannel  string
	DestUniqueid string
	DestExten    string
	DialString   string
	DialStatus   string
	// Hangup: the cause code (0 when absent).
	Cause int

	// Security events.
	Security   SecurityType
	Service    string // SIP, PJSIP, IAX2, AMI
	AccountID  string
	SessionID  string
	ACLName    string
	RemoteAddr netip.Addr // from RemoteAddress (IPV4|IPV6/<transport>/<addr>/<port>)
	RemotePort uint16
	// UsingPassword: SuccessfulAuth's `UsingPassword: 1`, the request was
	// authenticated with the secret. 0 (a peer matched by its address, an
	// AMI login by challenge) proves nothing about who sent it.
	UsingPassword bool

	// Address hints (PeerStatus, ContactStatus).
	Peer   string     // PeerStatus Peer (e.g. SIP/200) or ContactStatus EndpointName
	Status string     // PeerStatus PeerStatus / ContactStatus ContactStatus
	Addr   netip.Addr // the address in PeerStatus Address or the ContactStatus URI host
	Port   uint16

	// Forged is set when the message repeats a header Decode reads: text
	// an attacker controls carried a line break and forged headers. Its
	// fields must not be used to attribute anything. ForgedField names
	// the first repeated header, as Asterisk spells it (e.g. "Channel").
	Forged      bool
	ForgedField string
}

// Reset clears e for reuse.
func (e *Event) Reset() { *e = Event{} }
