package notify

import (
	"context"
	"time"

	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/notify/message"
)

// dispatcher makes the messages, on Run's goroutine: it gathers the
// updates of each incident for batch_delay, watches the rate of new
// incidents for the digest, asks the probes once a second, and hands each
// message to the senders that take it.
type dispatcher struct {
	n   *Notifier
	src Source

	pending map[string]*pending // by incident id: updates not sent yet
	// opens are the times incidents opened within digest_window.
	opens []time.Time
	// digested are the incidents told by digest: their every update goes
	// into the next digest, until they close.
	digested map[string]bool
	// digest holds the updates for the next digest, by incident id;
	// digestSince is when the first came.
	digest      map[string]*message.Incident
	digestOrder []string
	digestSince time.Time

	trouble      map[string]bool      // by probe: its trouble was notified
	downSince    map[string]time.Time // by probe: when it was first seen down
	droppedShown uint64               // events dropped, as last logged
}

// pending is what happened to one incident since its last message.
type pending struct {
	ev      incident.Event // the latest event
	updates []string
	due     time.Time // when the message goes out
}

func newDispatcher(n *Notifier, src Source) *dispatcher {
	return &dispatcher{n: n, src: src, pending: make(map[string]*pending), digested: make(map[string]bool),
		digest: make(map[string]*message.Incident), trouble: make(map[string]bool),
		downSince: make(map[string]time.Time)}
}

// run is the dispatcher's loop, until ctx ends.
func (d *dispatcher) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case it := <-d.n.in:
			d.event(it.ev, time.Now())
		case <-timer.C:
		case <-tick.C:
			now := time.Now()
			d.probe(now)
			d.flushDigest(now, false)
			d.noteDrops()
		}
		d.flushDue(time.Now())
		timer.Reset(d.nextDue())
	}
}

// nextDue is how long until the next pending message is due (an hour
// when none is: the tick comes first).
func (d *dispatcher) nextDue() time.Duration {
	next := time.Hour
	now := time.Now()
	for _, p := range d.pending {
		if w := p.due.Sub(now); w < next {
			next = max(w, 0)
		}
	}
	return next
}

// event records an incident event.
func (d *dispatcher) event(ev incident.Event, now time.Time) {
	if ev.Kind == incident.EventOpened && d.n.cfg.DigestThreshold > 0 {
		cut := now.Add(-time.Duration(d.n.cfg.DigestWindow))
		i := 0
		for i < len(d.opens) && !d.opens[i].After(cut) {
			i++
		}
		d.opens = append(d.opens[i:], now)
		if len(d.opens) > d.n.cfg.DigestThreshold {
			d.digested[ev.ID] = true
		}
	}
	p := d.pending[ev.ID]
	if p == nil {
		p = &pending{due: now.Add(time.Duration(d.n.cfg.BatchDelay))}
		d.pending[ev.ID] = p
	}
	p.ev = ev
	p.updates = append(p.updates, updateOf(&ev))
}

// flushDue sends the messages due at now.
func (d *dispatcher) flushDue(now time.Time) {
	for _, id := range sortedKeys(d.pending) {
		if p := d.pending[id]; !p.due.After(now) {
			delete(d.pending, id)
			d.send(id, p, now)
		}
	}
}

// send makes the message of incident id's pending updates: to
// Alertmanager always, to the other senders at once or, for an incident
// told by digest, in the next digest.
func (d *dispatcher) send(id string, p *pending, now time.Time) {
	var m *message.Message
	if rec, ok := d.src.Get(id, now); ok {
		m = d.n.incidentMessageOf(&rec, p.updates, p.ev.Mode, now)
	} else {
		m = d.n.eventMessage(&p.ev, p.updates, now) // pruned meanwhile
	}
	// Alertmanager by the incident's own severity, which its alert keeps
	// for life: an alert sent is resolved too.
	if d.n.am != nil && d.n.am.outlet.wants(m.Incident.Severity) {
		d.n.am.enqueue(m, &d.n.log)
	}
	if !d.digested[id] {
		d.deliver(m, false)
		return
	}
	if p.ev.Kind == incident.EventClosed {
		delete(d.digested, id)
	}
	if len(d.digest) == 0 {
		d.digestSince = now
	}
	if old := d.digest[id]; old != nil {
		m.Incident.Updates = append(old.Updates, m.Incident.Updates...)
	} else {
		d.digestOrder = append(d.digestOrder, id)
	}
	d.digest[id] = m.Incident
	d.flushDigest(now, false)
}

// flushDigest sends the digest once digest_window has passed since its
// first update (or now, with force).
func (d *dispatcher) flushDigest(now time.Time, force bool) {
	if len(d.digest) == 0 || (!force && now.Sub(d.digestSince) < time.Duration(d.n.cfg.DigestWindow)) {
		return
	}
	incs := make([]message.Incident, 0, len(d.digestOrder))
	for _, id := range d.digestOrder {
		incs = append(incs, *d.digest[id])
	}
	clear(d.digest)
	d.digestOrder = d.digestOrder[:0]
	d.deliver(d.n.digestMessage(incs, now), false)
}

// deliver hands m to every sender that takes its severity (but
// Alertmanager, which gets incidents and trouble on their own, unless
// toAM).
func (d *dispatcher) deliver(m *message.Message, toAM bool) {
	for _, o := range d.n.outs {
		if d.n.am != nil && o == d.n.am.outlet && !toAM {
			continue
		}
		if o.wants(m.Severity) {
			o.enqueue(m, &d.n.log)
		}
	}
}

// probe asks every probe, and notifies trouble that lasts trouble_after,
// and its end. The trouble lasts from the first time the probe was down,
// whatever its problem became since (unreachable, then refused ...).
func (d *dispatcher) probe(now time.Time) {
	after := time.Duration(d.n.cfg.TroubleAfter)
	for _, p := range d.n.probes {
		c := p.Check()
		key := p.What + "/" + p.Name
		if c.Down {
			if since, ok := d.downSince[key]; ok && since.Before(c.Since) {
				c.Since = since
			}
			d.downSince[key] = c.Since
		} else {
			c.Since = d.downSince[key]
			delete(d.downSince, key)
		}
		switch {
		case c.Down && !d.trouble[key] && now.Sub(c.Since) >= after:
			d.trouble[key] = true
			d.deliver(d.n.troubleMessage(&p, &c, now), true)
		case !c.Down && d.trouble[key]:
			d.trouble[key] = false
			d.deliver(d.n.troubleMessage(&p, &c, now), true)
		}
	}
}

// noteDrops logs the events dropped since the last look, at 1, 10, 100 ...
func (d *dispatcher) noteDrops() {
	n := d.n.dropped.Load()
	if n == d.droppedShown {
		return
	}
	for p := uint64(1); p <= n; p *= 10 {
		if p > d.droppedShown {
			d.n.log.Error().Uint64("dropped", n).
				Msg("incident events dropped: the notifier's queue is full (raise notify.queue_size): some updates are not notified")
			break
		}
	}
	d.droppedShown = n
}
