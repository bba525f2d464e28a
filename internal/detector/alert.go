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
	// Address rules: the source address (the last one seen) and the
	// network counted (Net: the address alone, a /32 or /128, or its IPv6
	// network of Config.IPv6Prefix bits).
	IP  netip.Addr
	Net netip.Prefix
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

// Level says which severity count reaches, or 0.
func (t Threshold) Level(count int) Severity { return level(t, count) }

// level says which severity count reaches, or 0.
func level(t Threshold, count int) Severity {
	switch {
	case t.Critical > 0 && count >= t.Critical:
		return Critical
	case t.Warning > 0 && count >= t.Warning:
		return Warning
	}
	return 0
}

// allow applies the cool-down: one alert per rule, key and severity per
// Cooldown, and no warning while a critical of the same rule is cooling down.
func (d *Detector) allow(pair *[2]uint32, sev Severity) bool {
	cd := uint32(d.cfg.Cooldown / time.Second)
	now := d.secs()
	last := &pair[sev-1]
	if *last != 0 && now-*last < cd {
		return false
	}
	if sev == Warning {
		if c := pair[Critical-1]; c != 0 && now-c < cd {
			return false
		}
	}
	*last = now
	return true
}

// secs is the time in whole seconds since the detector's first event, plus
// one so that 0 means never.
func (d *Detector) secs() uint32 {
	if d.base == 0 {
		d.base = d.now
	}
	return uint32((d.now-d.base)/int64(time.Second)) + 1
}

func (d *Detector) checkExt(e *extState, r Rule, t Threshold, count int, what string) {
	sev := level(t, count)
	if sev == 0 || !d.allow(&e.alerts[r-1], sev) {
		return
	}
	a := d.extAlert(e, r, sev, count, t.Window, what)
	if sev == Critical && !e.authed && !d.cfg.UnauthenticatedCritical {
		// Still said once per cool-down (it took the critical's turn), but
		// as a warning: nothing acts on it.
		a.Severity, a.Note = Warning, unauthNote
	}
	d.emit(a)
}

const unauthNote = "capped at warning: this endpoint was never seen authenticating with its secret (a REGISTER Asterisk accepted, or a SuccessfulAuth with UsingPassword 1): a trunk or a peer matched by its address?; list trunks in allow.extensions"

func (d *Detector) extAlert(e *extState, r Rule, sev Severity, count int, window time.Duration, what string) Alert {
	e.incident = max(e.incident, d.now+int64(d.cfg.Cooldown))
	return Alert{
		Time:      d.ev.Time,
		Seq:       d.ev.Seq,
		Rule:      r,
		Severity:  sev,
		Tech:      e.key.Tech,
		Extension: e.key.Name,
		Sources:   addrList(e.sources),
		Contacts:  addrList(e.contacts),
		Count:     count,
		Window:    window,
		Numbers:   e.numberList(),
		Reason:    what,
	}
}

func (d *Detector) checkAddr(a *addrState, r Rule, t Threshold, count int, what string) {
	sev := level(t, count)
	pair := &a.alerts[0]
	if r == RuleFailedProbes {
		pair = &a.alerts[1]
	}
	if sev == 0 || !d.allow(pair, sev) {
		return
	}
	a.incident = max(a.incident, d.now+int64(d.cfg.Cooldown))
	d.emit(Alert{
		Time:     d.ev.Time,
		Seq:      d.ev.Seq,
		Rule:     r,
		Severity: sev,
		IP:       a.addr,
		Net:      a.net(),
		Accounts: a.accountList(),
		Count:    count,
		Window:   t.Window,
		Numbers:  a.numbers.list(),
		Reason:   what,
	})
}

func (d *Detector) emit(a Alert) {
	if a.Time.IsZero() && d.now != 0 {
		a.Time = time.Unix(0, d.now).UTC()
	}
	d.stats.Alerts++
	d.out = append(d.out, a)
}
