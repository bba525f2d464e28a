// Package incident keeps the guard's incidents: one per extension and one
// per attacking address, opened by the first alert for which the policy
// decides a response (hangup, block_ip, rotate_secret) and closed when no
// alert of its key has come for the quiet time (response.incident_quiet),
// or early by Release. Within one incident each response is carried out
// at most once (package policy decides; the Book records), so a stolen
// extension gets one new secret and each attacking address one ban,
// however many rules its attack trips.
//
// The Book is also what the guard asks, on every new channel, whether the
// extension is stopped (Stopped), and what `guard incidents` lists
// (List). It survives a restart: it saves itself through a Store (the bans
// manager keeps it in the bans state file) when an outcome is recorded, at
// every Expire and when the guard calls Flush, which it does before a
// rotation, so that a secret is never rotated again after a crash; Load
// reads it back at start. Decide itself only records in memory: it runs on
// the detector loop for every alert, and the hang-up and the block, which
// may safely run again, must not wait for a disk write. In observe mode
// the book keeps its incidents in memory only.
//
// How the guard uses it. At start, after the bans manager's Start:
//
//	book, err := incident.New(incident.Options{Quiet: time.Duration(cfg.Response.IncidentQuiet), Mode: policy.ModeOf(cfg.Mode), Store: bansManager})
//	err = book.Load(bansManager.Incidents(), time.Now()) // an error: log it at error, go on with an empty book
//	table, err := policy.NewTable(&cfg.Policy)
//
// On a reload: a new table from the new policy table, book.SetQuiet, and
// book.SetMode after bansManager.Enforce or Observe. For each alert a of
// the detector:
//
//	decs = book.Decide(table, &a, time.Now(), decs[:0])
//	for _, d := range decs {
//		switch {
//		case d.Action == policy.Alert:     // log the alert, with d.Incident
//		case d.Result == policy.Running:  // carry it out (a rotation only
//			// after book.Flush: an error there, log it at error and act
//			// anyway), then
//			book.Outcome(d.Incident, d.Action, incident.Outcome{...})
//		default:                           // Would or Skipped: log d.Detail
//		}
//	}
//
// and, for every Newchannel an extension originates,
//
//	if stop, ok := book.Stopped(tech, name, time.Now()); ok { /* hang it up, naming stop */ }
//
// and, once a second, book.Expire(time.Now()) (log the incidents it closed).
// Before an extension's incident blocks an address, book.Owner says
// whether another incident (ref.ID != d.Incident) holds it already.
// `guard incidents` prints book.List, `guard release EXT` calls
// book.Release(policy.ExtensionKey(tech, name), time.Now()).
package incident

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/alert"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// Defaults of Options.
const (
	DefaultKeepClosed = 7 * 24 * time.Hour
	DefaultMaxClosed  = 100
)

// Bounds on what one incident records (its first alerts, the outcomes of
// each action), so that an attack that goes on for days does not grow the
// state file without end; AlertCount still counts every alert.
const (
	maxAlerts   = 10
	maxOutcomes = 16
)

// Store keeps the book across restarts: *bans.Manager implements it
// (bans.Manager.SaveIncidents). SaveIncidents returns once raw, a JSON
// array, is written.
type Store interface {
	SaveIncidents(raw json.RawMessage) error
}

// Options configure New.
type Options struct {
	// Quiet closes an incident when no alert of its key has come for this
	// long (response.incident_quiet). Required (> 0).
	Quiet time.Duration
	// Mode is the mode at start (SetMode follows reloads). In observe mode
	// the book decides as in enforce mode, every response as Would, and
	// saves nothing.
	Mode policy.Mode
	// Store saves the book; nil keeps it in memory only.
	Store Store
	// KeepClosed is how long a closed incident is kept, for List and
	// across restarts (default DefaultKeepClosed); MaxClosed bounds how
	// many are kept (default DefaultMaxClosed), the oldest going first.
	KeepClosed time.Duration
	MaxClosed  int
	// NewID returns a new incident id; default "inc-" and 8 random hex
	// digits. An id already in the book is never reused.
	NewID func() string
	// Observer, if set, is told of every incident opened, every outcome
	// recorded and every close (see Observer: it must never wait).
	Observer Observer
}

// Close reasons.
const (
	ClosedQuiet    = "quiet"    // no alert of its key for the quiet time
	ClosedReleased = "released" // ended by Release (guard release)
)

// Errors.
var (
	// ErrUnknown: Outcome of an incident the book does not have (closed
	// too long ago, or never opened).
	ErrUnknown = errors.New("incident: no such incident")
	// ErrNotOpen: Release of a key that has no open incident.
	ErrNotOpen = errors.New("incident: no open incident")
)

// Outcome is what came of an action the book decided Running, reported by
// whoever carried it out (Book.Outcome); the book also records the Would
// and Skipped outcomes it decides itself.
type Outcome struct {
	// Result is Done, Failed, Skipped or Would (a dry-run firewall's ban).
	Result policy.Result `json:"result"`
	// Target is what the action acted on: the extension ("SIP/200") or a
	// channel, and for block_ip the address alone ("203.0.113.9"): the
	// book takes the addresses an extension's incident blocked from it.
	Target string `json:"target,omitempty"`
	// Time is when the outcome was known.
	Time time.Time `json:"time"`
	// Detail says what was done, or why not. Never a secret: it is saved
	// and listed.
	Detail string `json:"detail,omitempty"`
	// Error is why a Failed action failed (the error's text; never a
	// secret).
	Error string `json:"error,omitempty"`
}

// Stop says why an extension is stopped: its open incident decided to
// hang up its calls.
type Stop struct {
	Incident string        // the incident's id
	Rule     detector.Rule // the rule whose alert opened it
}

// Book is the guard's incidents. Its methods are safe for concurrent use.
// Decide, Outcome, Release, Expire and SetMode save the book (in enforce
// mode, when it changed) before they return; Stopped never waits for a
// save.
type Book struct {
	opts Options

	saveMu sync.Mutex // serializes saves, so the last one written is the newest

	mu     sync.RWMutex
	quiet  time.Duration
	mode   policy.Mode
	loaded bool
	dirty  bool                        // changed since the last save
	open   map[policy.Key]*incident    // by key
	byID   map[string]*incident        // open and kept closed ones
	closed []*incident                 // closed, kept: in the order they closed
	stops  map[ami.Extension]*incident // extensions whose new calls are hung up
	owned  map[netip.Addr]ownership    // addresses blocked by open extension incidents
}

// ownership is an address an extension's open incident blocked, or is
// blocking (real: decided in enforce mode, even if the firewall is a dry
// run), or would have blocked in observe mode.
type ownership struct {
	inc  *incident
	real bool
}

// incident is one incident of the book.
type incident struct {
	key         policy.Key
	view        policy.Incident // id, opening rule and each action's progress
	severity    detector.Severity
	opened      time.Time
	last        time.Time // of its latest alert
	closed      time.Time // zero while open
	closeReason string
	stop        bool // hangup decided for real: new calls are hung up while open
	alertCount  int
	alerts      []alert.Record
	outcomes    [len(policy.Responses)][]Outcome
	pending     netip.Addr // block_ip decided Running with this address, owned until its outcome
}

// New returns an empty book. Load fills it from the state file.
func New(opts Options) (*Book, error) {
	if opts.Quiet <= 0 {
		return nil, errors.New("incident: Options.Quiet must be > 0")
	}
	if opts.KeepClosed <= 0 {
		opts.KeepClosed = DefaultKeepClosed
	}
	if opts.MaxClosed <= 0 {
		opts.MaxClosed = DefaultMaxClosed
	}
	if opts.NewID == nil {
		opts.NewID = randomID
	}
	return &Book{
		opts:  opts,
		quiet: opts.Quiet,
		mode:  opts.Mode,
		open:  make(map[policy.Key]*incident),
		byID:  make(map[string]*incident),
		stops: make(map[ami.Extension]*incident),
		owned: make(map[netip.Addr]ownership),
	}, nil
}

func randomID() string { return fmt.Sprintf("inc-%08x", rand.Uint32()) }

// slot is the index of a response in incident.outcomes, or -1.
func slot(a policy.Action) int { return slices.Index(policy.Responses[:], a) }

// SetQuiet changes the quiet time (a reload of response.incident_quiet);
// it applies to the open incidents too, from their last alert.
func (b *Book) SetQuiet(d time.Duration) {
	if d <= 0 {
		return
	}
	b.mu.Lock()
	b.quiet = d
	b.mu.Unlock()
}

// SetMode follows the configured mode (a reload). From observe to enforce
// the book saves what changed meanwhile; switch the bans manager to
// enforce first (bans.Manager.Enforce), or its Store refuses.
func (b *Book) SetMode(m policy.Mode) error {
	b.mu.Lock()
	b.mode = m
	b.mu.Unlock()
	return b.persist()
}

// openAt reports whether inc, open, is still open at now: an alert of its
// key came within the quiet time. b.mu must be held.
func (b *Book) openAt(inc *incident, now time.Time) bool {
	return now.Before(inc.last.Add(b.quiet))
}

// Decide returns, appended to dst, the decisions of table t about alert a
// (policy.Table.Decide) given the open incident of a's key, and records
// them: it opens an incident when a response is decided and none is open
// (filling in the decisions' Incident), adds the alert's figures to the
// open incident, counts the attempts, records the Would and Skipped
// outcomes, marks the extension stopped when a hangup is decided for real,
// and records all of it in memory only: Flush saves it (the guard does
// before a rotation), and so do the next Outcome and Expire. Until then a
// crash forgets the decisions, and a restarted guard decides them again: a
// hang-up and a block run twice are harmless; a rotation is flushed before
// it runs. Once the incident holds its first 10 alerts, an alert that
// decides nothing neither allocates nor writes.
func (b *Book) Decide(t *policy.Table, a *detector.Alert, now time.Time, dst []policy.Decision) []policy.Decision {
	key := policy.KeyOf(a)
	first := len(dst)
	var closed Event // of the incident of key found quiet, if any
	b.mu.Lock()
	inc := b.open[key]
	if inc != nil && !b.openAt(inc, now) {
		b.closeLocked(inc, inc.last.Add(b.quiet), ClosedQuiet)
		closed = b.eventOf(inc, EventClosed, inc.closed)
		inc = nil
	}
	var view policy.Incident
	if inc != nil {
		view = inc.view
	}
	if !key.IsExtension() {
		if o, ok := b.owned[key.Addr]; ok && o.inc != inc && (o.real || b.mode != policy.Enforce) && b.openAt(o.inc, now) {
			view.Owner = policy.Ref{ID: o.inc.view.ID, Key: o.inc.key}
		}
	}
	dst = t.Decide(a, b.mode, &view, dst)
	opened := false
	if inc == nil && slices.ContainsFunc(dst[first:], func(d policy.Decision) bool { return d.Action != policy.Alert }) {
		inc = b.openLocked(key, a, now)
		opened = true
		for i := first; i < len(dst); i++ {
			dst[i].Incident = inc.view.ID
		}
	}
	if inc == nil {
		b.mu.Unlock()
		if closed.Kind != 0 {
			b.emit(closed)
		}
		return dst
	}
	inc.last = now
	inc.alertCount++
	if len(inc.alerts) < maxAlerts {
		inc.alerts = append(inc.alerts, alert.FromAlert(a, ""))
	}
	for i := first; i < len(dst); i++ {
		b.applyLocked(inc, &dst[i], now)
	}
	b.dirty = true
	var ev Event
	if b.opts.Observer != nil && (opened || closed.Kind != 0 || hasOutcome(dst[first:])) {
		ev = b.eventOf(inc, EventOpened, now)
	}
	b.mu.Unlock()
	if ev.Kind == 0 {
		return dst
	}
	if closed.Kind != 0 {
		b.emit(closed)
	}
	if opened {
		b.emit(ev)
		return dst
	}
	// The outcomes the book decided for a later alert of an open incident.
	ev.Kind = EventOutcome
	for i := first; i < len(dst); i++ {
		if d := &dst[i]; d.Action != policy.Alert && (d.Result == policy.Would || d.Result == policy.Skipped) {
			ev.Action, ev.Result = d.Action, d.Result
			b.emit(ev)
		}
	}
	return dst
}

// hasOutcome reports whether decs hold an outcome the book records itself
// (Would, Skipped).
func hasOutcome(decs []policy.Decision) bool {
	for i := range decs {
		if d := &decs[i]; d.Action != policy.Alert && (d.Result == policy.Would || d.Result == policy.Skipped) {
			return true
		}
	}
	return false
}

// Flush saves the book now if it changed since the last save (in enforce
// mode, with a Store). The guard calls it before it rotates a secret, the
// one action that must never run again after a restart. An error means the
// book was not saved; the next Flush, Outcome or Expire tries again.
func (b *Book) Flush() error { return b.persist() }

// openLocked opens an incident of key for alert a. b.mu must be held.
func (b *Book) openLocked(key policy.Key, a *detector.Alert, now time.Time) *incident {
	id := b.opts.NewID()
	for b.byID[id] != nil {
		id = b.opts.NewID()
	}
	inc := &incident{key: key, severity: a.Severity, opened: now, last: now}
	inc.view.ID, inc.view.Rule = id, a.Rule
	b.open[key] = inc
	b.byID[id] = inc
	return inc
}

// applyLocked records decision d in inc. b.mu must be held.
func (b *Book) applyLocked(inc *incident, d *policy.Decision, now time.Time) {
	if d.Action == policy.Alert {
		return
	}
	inc.view.Apply(d)
	target := inc.key.String()
	if d.Action == policy.BlockIP && d.Addr.IsValid() {
		target = d.Addr.String()
	}
	switch d.Result {
	case policy.Would, policy.Skipped:
		b.addOutcome(inc, d.Action, Outcome{Result: d.Result, Target: target, Time: now, Detail: d.Detail})
	}
	switch {
	case d.Action == policy.Hangup && d.Result == policy.Running && inc.key.IsExtension():
		inc.stop = true
		b.stops[ami.Extension{Tech: inc.key.Tech, Name: inc.key.Name}] = inc
	case d.Action == policy.BlockIP && inc.key.IsExtension() && d.Addr.IsValid():
		switch d.Result {
		case policy.Running:
			inc.pending = d.Addr
			b.own(inc, d.Addr, true)
		case policy.Would:
			b.own(inc, d.Addr, false)
		}
	}
}

// own records that inc, an open extension incident, blocked (real) or
// would block addr. An address another open incident owns for real stays
// its. b.mu must be held.
func (b *Book) own(inc *incident, addr netip.Addr, real bool) {
	addr = addr.Unmap()
	if o, ok := b.owned[addr]; ok && o.inc != inc && (o.real || !real) {
		return
	}
	b.owned[addr] = ownership{inc: inc, real: real}
}

// addOutcome appends o to action a's outcomes in inc, up to maxOutcomes.
func (b *Book) addOutcome(inc *incident, a policy.Action, o Outcome) {
	if s := slot(a); s >= 0 && len(inc.outcomes[s]) < maxOutcomes {
		inc.outcomes[s] = append(inc.outcomes[s], o)
	}
}

// Outcome records what came of action act, decided Running in incident
// id: its result becomes the action's (a Failed one may be decided again
// by a later alert, see policy.MaxAttempts). For block_ip of an
// extension's incident, o.Target is the address blocked: the incident owns
// it while open, so the address's own incident does not block it again. A
// hangup Skipped ends the extension's stop. The book is saved before
// Outcome returns; the error says it was not (or that the incident or the
// result is unknown).
func (b *Book) Outcome(id string, act policy.Action, o Outcome) error {
	switch o.Result {
	case policy.Done, policy.Failed, policy.Skipped, policy.Would:
	default:
		return fmt.Errorf("incident: outcome %q of %s is not a result", o.Result, act)
	}
	if slot(act) < 0 {
		return fmt.Errorf("incident: %s is not a response", act)
	}
	b.mu.Lock()
	inc := b.byID[id]
	if inc == nil {
		b.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrUnknown, id)
	}
	b.addOutcome(inc, act, o)
	p := inc.view.Progress(act)
	p.Result = o.Result
	inc.view.SetProgress(act, p)
	isOpen := b.open[inc.key] == inc
	switch {
	case act == policy.Hangup && o.Result == policy.Skipped:
		inc.stop = false
		if k := (ami.Extension{Tech: inc.key.Tech, Name: inc.key.Name}); b.stops[k] == inc {
			delete(b.stops, k)
		}
	case act == policy.BlockIP && inc.key.IsExtension():
		if inc.pending.IsValid() {
			if own, ok := b.owned[inc.pending]; ok && own.inc == inc {
				delete(b.owned, inc.pending)
			}
			inc.pending = netip.Addr{}
		}
		// Decided in enforce mode: the address is the incident's, whether
		// the ban is real, through a dry-run firewall (Would) or recorded
		// and not applied yet (Failed).
		if addr, err := netip.ParseAddr(o.Target); err == nil && isOpen && o.Result != policy.Skipped {
			b.own(inc, addr, true)
		}
	}
	b.dirty = true
	var ev Event
	if b.opts.Observer != nil {
		ev = b.eventOf(inc, EventOutcome, o.Time)
		ev.Action, ev.Result = act, o.Result
	}
	b.mu.Unlock()
	err := b.persist()
	if ev.Kind != 0 {
		b.emit(ev)
	}
	return err
}

// Stopped reports whether the extension tech/name is stopped at now: its
// incident is open and decided (in enforce mode) to hang up its calls, so
// its new calls are hung up too. It is asked on every new channel: it
// allocates nothing and never waits for a save.
func (b *Book) Stopped(tech ami.Tech, name string, now time.Time) (Stop, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if len(b.stops) == 0 { // the usual case: nothing to hash
		return Stop{}, false
	}
	inc := b.stops[ami.Extension{Tech: tech, Name: name}]
	if inc == nil || !b.openAt(inc, now) {
		return Stop{}, false
	}
	return Stop{Incident: inc.view.ID, Rule: inc.view.Rule}, true
}

// Owner returns the open incident that blocked addr, or is blocking it:
// an extension's incident whose block_ip took it, or the address's own
// incident once its block_ip was decided for real. The guard asks it
// before an extension's incident blocks an address, so that the address
// is not banned a second time.
func (b *Book) Owner(addr netip.Addr, now time.Time) (policy.Ref, bool) {
	addr = addr.Unmap()
	b.mu.RLock()
	defer b.mu.RUnlock()
	// The address's own incident first: its block_ip ran only if no
	// extension's incident held the address then (it is skipped
	// otherwise), so an extension that claims the address later (Decide
	// records a block_ip being decided as its own) comes second.
	if inc := b.open[policy.AddressKey(addr)]; inc != nil && b.openAt(inc, now) {
		switch inc.view.Progress(policy.BlockIP).Result {
		case policy.Running, policy.Done, policy.Failed:
			return policy.Ref{ID: inc.view.ID, Key: inc.key}, true
		}
	}
	if o, ok := b.owned[addr]; ok && o.real && b.openAt(o.inc, now) {
		return policy.Ref{ID: o.inc.view.ID, Key: o.inc.key}, true
	}
	return policy.Ref{}, false
}

// Release closes the open incident of key at now, before its quiet time
// (guard release): an extension's new calls are no longer hung up, and
// its next alert opens a new incident. Bans stay (guard unblock lifts
// them). It returns the closed incident, or ErrNotOpen. The error of a
// save is returned with the record.
func (b *Book) Release(key policy.Key, now time.Time) (Record, error) {
	b.mu.Lock()
	inc := b.open[key]
	if inc == nil || !b.openAt(inc, now) {
		b.mu.Unlock()
		return Record{}, fmt.Errorf("%w: %s", ErrNotOpen, key)
	}
	b.closeLocked(inc, now, ClosedReleased)
	rec := b.recordLocked(inc, time.Time{})
	evs := b.closedEvents([]*incident{inc})
	b.mu.Unlock()
	err := b.persist()
	b.emitClosed(evs)
	return rec, err
}

// Expire closes the incidents whose quiet time has passed at now, drops
// closed incidents older than KeepClosed (or beyond MaxClosed), and saves
// the book if that, or anything before, changed it. It returns the
// incidents it closed. Call it about once a second.
func (b *Book) Expire(now time.Time) ([]Record, error) {
	b.mu.Lock()
	closed := b.expireLocked(now)
	var recs []Record
	for _, inc := range closed {
		recs = append(recs, b.recordLocked(inc, time.Time{}))
	}
	evs := b.closedEvents(closed)
	b.mu.Unlock()
	err := b.persist()
	b.emitClosed(evs)
	return recs, err
}

// expireLocked closes the open incidents quiet at now and prunes the
// closed ones. b.mu must be held.
func (b *Book) expireLocked(now time.Time) []*incident {
	var closed []*incident
	for _, inc := range b.open {
		if !b.openAt(inc, now) {
			closed = append(closed, inc)
		}
	}
	slices.SortFunc(closed, func(x, y *incident) int { return x.last.Compare(y.last) })
	for _, inc := range closed {
		b.closeLocked(inc, inc.last.Add(b.quiet), ClosedQuiet)
	}
	b.pruneLocked(now)
	return closed
}

// closeLocked closes inc at the time at. b.mu must be held.
func (b *Book) closeLocked(inc *incident, at time.Time, reason string) {
	delete(b.open, inc.key)
	if k := (ami.Extension{Tech: inc.key.Tech, Name: inc.key.Name}); inc.key.IsExtension() && b.stops[k] == inc {
		delete(b.stops, k)
	}
	for addr, o := range b.owned {
		if o.inc == inc {
			delete(b.owned, addr)
		}
	}
	inc.closed, inc.closeReason = at, reason
	b.closed = append(b.closed, inc)
	b.dirty = true
}

// pruneLocked drops closed incidents older than KeepClosed, and the
// oldest beyond MaxClosed. b.mu must be held.
func (b *Book) pruneLocked(now time.Time) {
	cut := now.Add(-b.opts.KeepClosed)
	kept := b.closed[:0]
	for _, inc := range b.closed {
		if inc.closed.Before(cut) {
			delete(b.byID, inc.view.ID)
			b.dirty = true
			continue
		}
		kept = append(kept, inc)
	}
	clear(b.closed[len(kept):])
	b.closed = kept
	if over := len(b.closed) - b.opts.MaxClosed; over > 0 {
		slices.SortStableFunc(b.closed, func(x, y *incident) int { return x.closed.Compare(y.closed) })
		for _, inc := range b.closed[:over] {
			delete(b.byID, inc.view.ID)
		}
		b.closed = slices.Delete(b.closed, 0, over)
		b.dirty = true
	}
}

// persist saves the book through the Store when it changed, in enforce
// mode. Saves are serialized and each encodes the book as it is then, so
// the file never goes back to an older book.
func (b *Book) persist() error {
	if b.opts.Store == nil {
		return nil
	}
	b.saveMu.Lock()
	defer b.saveMu.Unlock()
	b.mu.Lock()
	if !b.dirty || b.mode != policy.Enforce {
		b.mu.Unlock()
		return nil
	}
	raw, err := b.marshalLocked()
	b.dirty = false
	b.mu.Unlock()
	if err == nil {
		err = b.opts.Store.SaveIncidents(raw)
	}
	if err != nil {
		b.mu.Lock()
		b.dirty = true
		b.mu.Unlock()
		return fmt.Errorf("incidents not saved: %w", err)
	}
	return nil
}
