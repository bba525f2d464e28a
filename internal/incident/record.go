package incident

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// Record is an incident as List shows it and the state file keeps it.
// Its JSON form (see MarshalJSON) is what `guard incidents --json` prints.
type Record struct {
	ID       string
	Key      policy.Key        // the extension, or the address
	Rule     detector.Rule     // the rule whose alert opened it
	Severity detector.Severity // that alert's severity
	Opened   time.Time
	// LastAlert is the time of its latest alert.
	LastAlert time.Time
	// Closes is, in List, when an open incident closes if no alert of its
	// key comes (LastAlert plus the quiet time); zero for a closed one.
	Closes time.Time
	// Closed is when it closed; zero while open. CloseReason is then
	// ClosedQuiet or ClosedReleased.
	Closed      time.Time
	CloseReason string
	// Stopped: its hangup was decided in enforce mode, so while it is open
	// the extension's new calls are hung up.
	Stopped bool
	// AlertCount counts its alerts; Alerts holds the first ones (up to
	// 10), with their figures, as `guard replay` prints them.
	AlertCount int
	Alerts     []alert.Record
	// Actions are the responses decided in it, in the order hangup,
	// block_ip, rotate_secret.
	Actions []ActionRecord
}

// Open reports whether the incident is open.
func (r *Record) Open() bool { return r.Closed.IsZero() }

// ActionRecord is one response of an incident.
type ActionRecord struct {
	Action policy.Action `json:"action"`
	// Result is the action's state: the latest outcome's result, or
	// running (decided, no outcome yet).
	Result policy.Result `json:"result"`
	// Attempts counts the times it was decided for real (enforce mode).
	Attempts int `json:"attempts,omitempty"`
	// BlockedBy is, for a block_ip skipped because an extension's incident
	// blocked the address, that incident.
	BlockedBy string `json:"blocked_by,omitempty"`
	// Outcomes, oldest first (up to 16).
	Outcomes []Outcome `json:"outcomes"`
}

// Listing is what `guard incidents` shows.
type Listing struct {
	Open   []Record `json:"open"`   // the open incidents, oldest first
	Recent []Record `json:"recent"` // the closed ones kept, newest first
}

// wireRecord is Record's JSON form.
type wireRecord struct {
	ID          string         `json:"id"`
	Tech        string         `json:"tech,omitempty"`
	Extension   string         `json:"extension,omitempty"`
	IP          string         `json:"ip,omitempty"`
	Rule        string         `json:"rule"`
	Severity    string         `json:"severity"`
	Opened      time.Time      `json:"opened"`
	LastAlert   time.Time      `json:"last_alert"`
	Closes      time.Time      `json:"closes,omitzero"`
	Closed      time.Time      `json:"closed,omitzero"`
	CloseReason string         `json:"close_reason,omitempty"`
	Stopped     bool           `json:"stopped"`
	AlertCount  int            `json:"alert_count"`
	Alerts      []alert.Record `json:"alerts"`
	Actions     []ActionRecord `json:"actions"`
}

// MarshalJSON writes the record with the extension as tech and extension
// (or the address as ip), the rule and severity by name, times in RFC
// 3339 and closes, closed and close_reason only when set.
func (r Record) MarshalJSON() ([]byte, error) {
	return json.Marshal(r.wire())
}

// wire returns the record's JSON form.
func (r *Record) wire() wireRecord {
	w := wireRecord{
		ID: r.ID, Rule: r.Rule.String(), Severity: r.Severity.String(),
		Opened: r.Opened, LastAlert: r.LastAlert, Closes: r.Closes, Closed: r.Closed, CloseReason: r.CloseReason,
		Stopped: r.Stopped, AlertCount: r.AlertCount, Alerts: r.Alerts, Actions: r.Actions,
	}
	if w.Alerts == nil {
		w.Alerts = []alert.Record{}
	}
	if w.Actions == nil {
		w.Actions = []ActionRecord{}
	}
	if r.Key.IsExtension() {
		w.Tech, w.Extension = r.Key.Tech.String(), r.Key.Name
	} else {
		w.IP = r.Key.Addr.String()
	}
	return w
}

// UnmarshalJSON reads what MarshalJSON wrote, strictly: an unknown field,
// rule, severity, action or result, or a key that is neither a valid
// extension nor an address, is an error.
func (r *Record) UnmarshalJSON(data []byte) error {
	var w wireRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	rec := Record{
		ID: w.ID, Opened: w.Opened, LastAlert: w.LastAlert, Closes: w.Closes, Closed: w.Closed,
		CloseReason: w.CloseReason, Stopped: w.Stopped, AlertCount: w.AlertCount, Alerts: w.Alerts, Actions: w.Actions,
	}
	var ok bool
	if rec.Rule, ok = parseRule(w.Rule); !ok {
		return fmt.Errorf("incident %s: %q is not a rule", w.ID, w.Rule)
	}
	if rec.Severity, ok = parseSeverity(w.Severity); !ok {
		return fmt.Errorf("incident %s: %q is not a severity", w.ID, w.Severity)
	}
	switch {
	case w.Extension != "" && w.IP == "":
		tech, ok := ami.ParseTech(w.Tech)
		if !ok || !ami.ValidName(w.Extension) {
			return fmt.Errorf("incident %s: %q/%q is not an extension", w.ID, w.Tech, w.Extension)
		}
		rec.Key = policy.ExtensionKey(tech, w.Extension)
	case w.Extension == "" && w.Tech == "" && w.IP != "":
		addr, err := netip.ParseAddr(w.IP)
		if err != nil || addr.Zone() != "" {
			return fmt.Errorf("incident %s: %q is not an address", w.ID, w.IP)
		}
		rec.Key = policy.AddressKey(addr)
	default:
		return fmt.Errorf("incident %s: neither an extension nor an address", w.ID)
	}
	*r = rec
	return nil
}

func parseRule(s string) (detector.Rule, bool) {
	for r := detector.Rule(1); r.String() != "unknown"; r++ {
		if r.String() == s {
			return r, true
		}
	}
	return 0, false
}

func parseSeverity(s string) (detector.Severity, bool) {
	for _, v := range []detector.Severity{detector.Warning, detector.Critical} {
		if v.String() == s {
			return v, true
		}
	}
	return 0, false
}

// recordLocked returns inc as a Record that shares nothing with the book;
// now, when not zero, fills in Closes of an open incident. b.mu must be
// held (read).
func (b *Book) recordLocked(inc *incident, now time.Time) Record {
	r := b.viewLocked(inc, now)
	r.Alerts = cloneAlerts(r.Alerts)
	for i := range r.Actions {
		r.Actions[i].Outcomes = slices.Clone(r.Actions[i].Outcomes)
	}
	return r
}

// viewLocked is recordLocked without the copies: the Record shares the
// incident's alerts and outcomes. b.mu must be held (read) while it is
// used.
func (b *Book) viewLocked(inc *incident, now time.Time) Record {
	r := Record{
		ID: inc.view.ID, Key: inc.key, Rule: inc.view.Rule, Severity: inc.severity,
		Opened: inc.opened, LastAlert: inc.last, Closed: inc.closed, CloseReason: inc.closeReason,
		Stopped: inc.stop && inc.closed.IsZero(), AlertCount: inc.alertCount, Alerts: inc.alerts,
	}
	if r.Open() && !now.IsZero() {
		r.Closes = inc.last.Add(b.quiet)
	}
	for i, act := range policy.Responses {
		p := inc.view.Progress(act)
		if p.Result == policy.None {
			continue
		}
		r.Actions = append(r.Actions, ActionRecord{
			Action: act, Result: p.Result, Attempts: int(p.Attempts), BlockedBy: p.BlockedBy, Outcomes: inc.outcomes[i],
		})
	}
	return r
}

func cloneAlerts(as []alert.Record) []alert.Record {
	out := slices.Clone(as)
	for i := range out {
		a := &out[i]
		a.Sources, a.Contacts, a.Accounts, a.Numbers = slices.Clone(a.Sources), slices.Clone(a.Contacts), slices.Clone(a.Accounts), slices.Clone(a.Numbers)
	}
	return out
}

// List returns the open incidents and the closed ones kept (closing those
// whose quiet time has passed at now first; the next save writes that).
func (b *Book) List(now time.Time) Listing {
	b.mu.Lock()
	evs := b.closedEvents(b.expireLocked(now))
	defer b.emitClosed(evs) // after the unlock below
	defer b.mu.Unlock()
	l := Listing{Open: []Record{}, Recent: []Record{}}
	for _, inc := range b.open {
		l.Open = append(l.Open, b.recordLocked(inc, now))
	}
	slices.SortFunc(l.Open, func(x, y Record) int { return cmpRecords(x, y, x.Opened, y.Opened) })
	for _, inc := range b.closed {
		l.Recent = append(l.Recent, b.recordLocked(inc, now))
	}
	slices.SortFunc(l.Recent, func(x, y Record) int { return cmpRecords(y, x, y.Closed, x.Closed) })
	return l
}

// cmpRecords orders by tx, ty, then by id.
func cmpRecords(x, y Record, tx, ty time.Time) int {
	if c := tx.Compare(ty); c != 0 {
		return c
	}
	return cmp.Compare(x.ID, y.ID)
}

// marshalLocked encodes every incident of the book, closed ones first in
// the order they closed, then the open ones by opening. b.mu must be held.
func (b *Book) marshalLocked() (json.RawMessage, error) {
	open := make([]*incident, 0, len(b.open))
	for _, inc := range b.open {
		open = append(open, inc)
	}
	slices.SortFunc(open, func(x, y *incident) int {
		if c := x.opened.Compare(y.opened); c != 0 {
			return c
		}
		return cmp.Compare(x.view.ID, y.view.ID)
	})
	ws := make([]wireRecord, 0, len(b.closed)+len(open))
	for _, incs := range [2][]*incident{b.closed, open} {
		for _, inc := range incs {
			r := b.viewLocked(inc, time.Time{})
			ws = append(ws, r.wire())
		}
	}
	return json.Marshal(ws)
}

// interrupted is the detail of an action the guard stopped while it ran.
const interrupted = "the guard stopped while this action ran: it is not run again in this incident; see whether it took effect (for rotate_secret, the last line of the secrets file for the extension)"

// Load fills an empty book with what Save wrote (bans.Manager.Incidents
// at start; nil: nothing). The incidents whose quiet time passed while
// the guard was stopped are closed then; an action the guard stopped
// while it ran is Skipped (never run again in its incident: it may have
// taken effect) with a detail that says so; an extension whose hangup was
// decided is still stopped while its incident stays open. In enforce
// mode what Load changed is saved before it returns.
//
// Content that cannot be used (not the list MarshalJSON writes, an id
// twice, two open incidents of one key) is an error and the book stays
// empty: log it loudly, as a restart in the middle of an attack may then
// run an incident's actions again.
func (b *Book) Load(raw json.RawMessage, now time.Time) error {
	if len(raw) == 0 {
		return nil
	}
	var recs []Record
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&recs); err != nil {
		return fmt.Errorf("incidents in the state file cannot be used: %w", err)
	}
	if dec.More() {
		return errors.New("incidents in the state file cannot be used: data after the list")
	}
	b.mu.Lock()
	if b.loaded || len(b.byID) > 0 {
		b.mu.Unlock()
		return errors.New("incident: Load of a book in use")
	}
	byID := make(map[string]*incident, len(recs))
	open := make(map[policy.Key]*incident)
	var incs []*incident
	for i := range recs {
		inc, err := fromRecord(&recs[i])
		if err != nil {
			b.mu.Unlock()
			return fmt.Errorf("incidents in the state file cannot be used: %w", err)
		}
		if byID[inc.view.ID] != nil {
			b.mu.Unlock()
			return fmt.Errorf("incidents in the state file cannot be used: incident %s twice", inc.view.ID)
		}
		byID[inc.view.ID] = inc
		if inc.closed.IsZero() {
			if other := open[inc.key]; other != nil {
				b.mu.Unlock()
				return fmt.Errorf("incidents in the state file cannot be used: incidents %s and %s of %s both open", other.view.ID, inc.view.ID, inc.key)
			}
			open[inc.key] = inc
		}
		incs = append(incs, inc)
	}
	b.loaded = true
	changed := false
	for _, inc := range incs {
		b.byID[inc.view.ID] = inc
		if !inc.closed.IsZero() {
			b.closed = append(b.closed, inc)
			continue
		}
		b.open[inc.key] = inc
		for i, act := range policy.Responses {
			if p := inc.view.Progress(act); p.Result == policy.Running {
				p.Result = policy.Skipped
				inc.view.SetProgress(act, p)
				inc.outcomes[i] = append(inc.outcomes[i], Outcome{Result: policy.Skipped, Target: inc.key.String(), Time: now, Detail: interrupted})
				changed = true
			}
		}
		if inc.stop && inc.key.IsExtension() {
			b.stops[ami.Extension{Tech: inc.key.Tech, Name: inc.key.Name}] = inc
		}
		if inc.key.IsExtension() {
			real := inc.view.Progress(policy.BlockIP).Attempts > 0 // decided in enforce mode
			for _, o := range inc.outcomes[slot(policy.BlockIP)] {
				if addr, err := netip.ParseAddr(o.Target); err == nil && o.Result != policy.Skipped {
					b.own(inc, addr, real)
				}
			}
		}
	}
	closed := b.expireLocked(now)
	if len(closed) > 0 || changed {
		b.dirty = true
	}
	evs := b.closedEvents(closed)
	b.mu.Unlock()
	err := b.persist()
	b.emitClosed(evs)
	return err
}

// fromRecord makes an incident of a record read from the state file.
func fromRecord(r *Record) (*incident, error) {
	if r.ID == "" {
		return nil, errors.New("an incident without id")
	}
	if r.Opened.IsZero() || r.LastAlert.Before(r.Opened) {
		return nil, fmt.Errorf("incident %s: its times are not in order", r.ID)
	}
	inc := &incident{
		key: r.Key, severity: r.Severity, opened: r.Opened, last: r.LastAlert, closed: r.Closed,
		closeReason: r.CloseReason, stop: r.Stopped, alertCount: r.AlertCount, alerts: r.Alerts,
	}
	inc.view.ID, inc.view.Rule = r.ID, r.Rule
	if !inc.closed.IsZero() && inc.closeReason != ClosedQuiet && inc.closeReason != ClosedReleased {
		return nil, fmt.Errorf("incident %s: %q is not a close reason", r.ID, inc.closeReason)
	}
	seen := policy.Set(0)
	for _, a := range r.Actions {
		s := slot(a.Action)
		if s < 0 || seen.Has(a.Action) || a.Attempts < 0 || a.Attempts > 255 {
			return nil, fmt.Errorf("incident %s: action %s is not a response, or listed twice", r.ID, a.Action)
		}
		seen = seen.With(a.Action)
		inc.view.SetProgress(a.Action, policy.Progress{Result: a.Result, Attempts: uint8(a.Attempts), BlockedBy: a.BlockedBy})
		inc.outcomes[s] = a.Outcomes
	}
	return inc, nil
}
