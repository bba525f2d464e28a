package detector

import (
	"net/netip"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// Rule names a detection rule.
type Rule uint8

// The rules, in the order of the README.
const (
	RuleCallRate Rule = iota + 1
	RuleConcurrent
	RulePrefixGuess
	RuleInternational
	RuleFailedProbes
	RuleAuthFailures
	RuleNewSource
	numRules
)

var ruleNames = [...]string{"", "call_rate", "concurrent", "prefix_guess", "international", "failed_probes", "auth_failures", "new_source"}

func (r Rule) String() string {
	if r > 0 && r < numRules {
		return ruleNames[r]
	}
	return "unknown"
}

// Severity of an alert.
type Severity uint8

// Severities. Critical is what the responder acts on by default.
const (
	Warning Severity = iota + 1
	Critical
)

func (s Severity) String() string {
	switch s {
	case Warning:
		return "warning"
	case Critical:
		return "critical"
	}
	return "unknown"
}

// Alert is what the detector saw. It says nothing about what to do: that is
// the policy's business.
type Alert struct {
	Time     time.Time // event time of the message that tripped the rule
	Seq      int       // its position in the stream
	Rule     Rule
	Severity Severity
	// Extension rules: the extension (Tech + bare name).
	Tech      ami.Tech
	Extension string
	// Address rules: the source address.
	IP netip.Addr
	// Sources are the addresses Asterisk received the extension's requests
	// from (SuccessfulAuth's RemoteAddress), newest first: whom to block.
	Sources []netip.Addr
	// Contacts are addresses the client supplied (PeerStatus Address, which
	// chan_sip takes from the Contact header; ContactStatus URI host),
	// newest first. Anyone who can register writes what they like there:
	// information, never an address to act on.
	Contacts []netip.Addr
	// Accounts tried from the address (address rules).
	Accounts []string
	Count    int           // events counted in the window (for concurrent: live calls)
	Window   time.Duration // the rule's window (0 for concurrent and new_source)
	Numbers  []string      // a sample of the dialled numbers
	// Reason says what was seen, for a human.
	Reason string
	// Note qualifies the alert (e.g. why it was capped at warning).
	Note string
}

// IsExtension reports whether the alert is about an extension (else an address).
func (a *Alert) IsExtension() bool { return a.Extension != "" }
