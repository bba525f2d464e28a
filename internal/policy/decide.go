package policy

import (
	"net/netip"

	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/detector"
)

// MaxAttempts is how often one incident decides an action whose earlier
// attempts failed (each attempt already retries what a retry can help,
// response.retry_max times): a later alert of the incident tries it again
// until it is done or has failed this often.
const MaxAttempts = 3

// Progress is how far one action of an incident got.
type Progress struct {
	Result Result
	// Attempts counts the times the action was decided Running.
	Attempts uint8
	// BlockedBy is, for a block_ip Skipped because an extension's incident
	// blocked the address, that incident's id.
	BlockedBy string
}

// Ref names an incident.
type Ref struct {
	ID  string
	Key Key
}

// Incident is what Decide needs to know of the open incident of the
// alert's key (the zero Incident: none is open).
type Incident struct {
	// ID names the open incident; "" when none is open.
	ID string
	// Rule is the rule whose alert opened it.
	Rule detector.Rule
	// Owner is, for an address, the open incident of an extension that
	// blocked the address (zero: none): the address's own incident does
	// not block it again.
	Owner    Ref
	progress [numActions]Progress
}

// Progress returns how far action a got in the incident.
func (inc *Incident) Progress(a Action) Progress {
	if a >= numActions {
		return Progress{}
	}
	return inc.progress[a]
}

// SetProgress sets how far action a got (the incident book records
// outcomes with it).
func (inc *Incident) SetProgress(a Action, p Progress) {
	if a > 0 && a < numActions {
		inc.progress[a] = p
	}
}

// Apply records in the incident's progress a decision Decide returned for
// it: Running counts an attempt, Would and Skipped are final (see Result).
func (inc *Incident) Apply(d *Decision) {
	if d.Action == Alert || d.Action >= numActions {
		return
	}
	p := &inc.progress[d.Action]
	switch d.Result {
	case Running:
		p.Result, p.BlockedBy = Running, ""
		p.Attempts++
	case Would:
		p.Result, p.BlockedBy = Would, ""
	case Skipped:
		p.Result, p.BlockedBy = Skipped, d.BlockedBy.ID
	}
}

// Decision is one thing to do about an alert.
type Decision struct {
	Action Action
	// Result says what to do with it. Running: carry it out (for Alert:
	// log the alert, in either mode) and report the outcome to the
	// incident book. Would (observe mode) and Skipped: carry nothing out;
	// log the outcome, which the book has recorded, with Detail.
	Result Result
	// Key is the incident's key: the extension, or the address of an
	// address rule. Hangup and RotateSecret act on the extension.
	Key Key
	// Addr is block_ip's address: for an address rule the address; for an
	// extension the newest address Asterisk received its requests from
	// (the alert's Sources), zero when it has none. For an extension, the
	// address of its live call, when Asterisk gives one, is the better
	// target: report the address blocked in the outcome.
	Addr netip.Addr
	// Incident is the incident's id. Decide leaves it empty when the alert
	// opens a new incident, and the book fills it in; it stays empty for
	// an Alert decision when no incident is open and the alert opens none.
	Incident string
	// OpenedBy is the rule whose alert opened the incident (this alert's
	// rule for a new one).
	OpenedBy detector.Rule
	// Reason says why, for the logs and a ban's record: the alert's rule,
	// severity and reason ("call_rate critical: extension SIP/200: 5 calls
	// started in 1s"). Empty for Alert.
	Reason string
	// Detail says, for Would and Skipped, what was not done and why.
	Detail string
	// Attempt is, for Running, which attempt this is (1 to MaxAttempts).
	Attempt uint8
	// BlockedBy is, for a block_ip Skipped because an extension's incident
	// blocked the address, that incident.
	BlockedBy Ref
}

// Decide returns, appended to dst, the decisions about alert a, in the
// order of the Action constants: Alert when the table says to log it,
// then the responses the table names that the incident inc (of a's key,
// zero when none is open) has not carried out yet. Each response is
// decided once per incident, except one that failed (see MaxAttempts). An
// address alert never gets Hangup or RotateSecret. In observe mode every
// response is decided Would, once per incident. A block_ip of an address
// that an extension's open incident blocked (inc.Owner) is Skipped.
//
// Decide changes nothing: the caller records the decisions in the
// incident (Incident.Apply), opening one when none was open and a
// response was decided.
func (t *Table) Decide(a *detector.Alert, mode Mode, inc *Incident, dst []Decision) []Decision {
	set := t.Actions(a.Rule, a.Severity)
	key := KeyOf(a)
	opened := inc.Rule
	if inc.ID == "" {
		opened = a.Rule
	}
	if set.Has(Alert) {
		dst = append(dst, Decision{Action: Alert, Result: Running, Key: key, Incident: inc.ID, OpenedBy: opened})
	}
	if !key.IsExtension() {
		set = set.Without(Hangup).Without(RotateSecret)
	}
	var reason string
	for _, act := range Responses {
		if !set.Has(act) {
			continue
		}
		res, detail := decide(act, mode, inc, key)
		if res == None {
			continue
		}
		if reason == "" {
			r := alert.FromAlert(a, "")
			reason = r.Rule + " " + r.Severity + ": " + r.Reason
		}
		d := Decision{Action: act, Result: res, Key: key, Incident: inc.ID, OpenedBy: opened, Reason: reason, Detail: detail}
		switch {
		case act == BlockIP && !key.IsExtension():
			d.Addr = key.Addr
		case act == BlockIP && len(a.Sources) > 0:
			d.Addr = a.Sources[0].Unmap()
		}
		switch res {
		case Running:
			d.Attempt = inc.progress[act].Attempts + 1
		case Skipped:
			d.BlockedBy = inc.Owner
		}
		dst = append(dst, d)
	}
	return dst
}

// decide says whether the incident decides act now, and how.
func decide(act Action, mode Mode, inc *Incident, key Key) (Result, string) {
	p := inc.progress[act]
	switch p.Result {
	case None:
	case Would:
		// Observe mode decided it (no attempt): enforce mode decides it for
		// real. A dry run carried it out (an attempt): that was it.
		if mode != Enforce || p.Attempts > 0 {
			return None, ""
		}
	case Failed:
		// Tried again, a bounded number of times.
		if mode != Enforce || p.Attempts >= MaxAttempts {
			return None, ""
		}
	case Skipped:
		// Only a block skipped because an extension's incident held the
		// address comes back, once that incident no longer does.
		if p.BlockedBy == "" || p.BlockedBy == inc.Owner.ID {
			return None, ""
		}
	default: // Running, Done
		return None, ""
	}
	if act == BlockIP && !key.IsExtension() && inc.Owner.ID != "" {
		return Skipped, key.Addr.String() + " is blocked by incident " + inc.Owner.ID + " of " + inc.Owner.Key.String() + ", which owns it"
	}
	if mode != Enforce {
		return Would, "mode is observe: nothing done"
	}
	return Running, ""
}
