package incident

import (
	"time"

	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

// EventKind is what happened to an incident.
type EventKind uint8

// The kinds of Event.
const (
	// EventOpened: the incident opened (Decide). The outcomes the book
	// decided itself with it (Would, Skipped) come with it, not as events
	// of their own.
	EventOpened EventKind = iota + 1
	// EventOutcome: an outcome of an action was recorded: reported by
	// whoever carried it out (Outcome), or decided by the book for a later
	// alert of an open incident (Would, Skipped).
	EventOutcome
	// EventClosed: the incident closed (its quiet time passed, or
	// Release).
	EventClosed
)

var eventKindNames = [...]string{"", "opened", "outcome", "closed"}

// String returns "opened", "outcome" or "closed".
func (k EventKind) String() string {
	if int(k) < len(eventKindNames) && k > 0 {
		return eventKindNames[k]
	}
	return "unknown"
}

// Event tells an Observer that an incident changed. It is a small value,
// copied: it holds what is known without a look into the book (Book.Get
// returns the whole incident as it is when asked).
type Event struct {
	Kind EventKind
	ID   string     // the incident's id
	Key  policy.Key // its extension or address
	// Rule and Severity are those of the alert that opened it.
	Rule     detector.Rule
	Severity detector.Severity
	// Time is when it happened: the opening alert's, the outcome's, or
	// the close.
	Time time.Time
	// Mode is the book's mode then: in observe mode the responses are
	// Would.
	Mode policy.Mode
	// Action and Result, for EventOutcome: the action and its outcome.
	Action policy.Action
	Result policy.Result
	// CloseReason, for EventClosed: ClosedQuiet or ClosedReleased.
	CloseReason string
}

// Observer is told of every Event of a book (Options.Observer). The book
// calls it after the change, never while it holds its lock, from the
// goroutine that made the change: the detector loop for Decide, so it
// must return at once and never wait (queue the event, or drop it and
// count the drop).
type Observer func(Event)

// eventOf is the event of kind k about inc at t. b.mu must be held.
func (b *Book) eventOf(inc *incident, k EventKind, t time.Time) Event {
	return Event{Kind: k, ID: inc.view.ID, Key: inc.key, Rule: inc.view.Rule, Severity: inc.severity, Time: t, Mode: b.mode,
		CloseReason: inc.closeReason}
}

// emit hands ev to the observer, if there is one. b.mu must not be held.
func (b *Book) emit(ev Event) {
	if b.opts.Observer != nil {
		b.opts.Observer(ev)
	}
}

// emitClosed tells the observer of the incidents closed. b.mu must not be
// held.
func (b *Book) emitClosed(evs []Event) {
	for _, ev := range evs {
		b.emit(ev)
	}
}

// closedEvents are the events of incidents just closed. b.mu must be held.
func (b *Book) closedEvents(closed []*incident) []Event {
	if b.opts.Observer == nil || len(closed) == 0 {
		return nil
	}
	evs := make([]Event, len(closed))
	for i, inc := range closed {
		evs[i] = b.eventOf(inc, EventClosed, inc.closed)
	}
	return evs
}

// Get returns incident id as it is at now (Closes filled in while it is
// open), sharing nothing with the book, and whether the book has it (open,
// or closed and still kept).
func (b *Book) Get(id string, now time.Time) (Record, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	inc := b.byID[id]
	if inc == nil {
		return Record{}, false
	}
	return b.recordLocked(inc, now), true
}
