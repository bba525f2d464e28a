package guard

import "github.com/astguard/astguard/internal/ami"

// SessionStats returns the counters of the event session (received,
// queued, dropped ...): the load generator reads the drops from it.
func (g *Guard) SessionStats() ami.SessionStats {
	if g.events == nil {
		return ami.SessionStats{}
	}
	return g.events.Stats()
}

// QueueLen is how many events wait for the detector loop now.
func (g *Guard) QueueLen() int { return len(g.queue) }
