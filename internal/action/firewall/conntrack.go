package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/ti-mo/conntrack"
)

// flowCutter deletes, in the background, the conntrack entries of what a
// firewall blocked, so that flows established before the block (let
// through by an ESTABLISHED accept rule above our jump) stop too. The
// DROP is in the kernel before: Block does not wait for this. Deleting
// takes a dump of the whole conntrack table, which walks every bucket of
// it whatever the entries (some 6 ms for 262,144 buckets): the prefixes
// blocked while a dump runs wait for the next, one dump for all of them,
// and dumps are at least cutEvery apart, so that a flood of bans costs at
// most some 6 % of a CPU here and an established flow goes on for at most
// some 0.1 s after its ban. A failure is logged (the block holds; the
// flows end with their conntrack timeout).
type flowCutter struct {
	ct  flowTable // nil: disabled
	log zerolog.Logger

	mu      sync.Mutex
	queue   []netip.Prefix
	running bool
	idle    *sync.Cond // signalled when a run ends with nothing queued
}

// cutTimeout bounds one dump and its deletions; cutEvery is the least time
// from one dump's start to the next's.
const (
	cutTimeout = 30 * time.Second
	cutEvery   = 100 * time.Millisecond
)

func newFlowCutter(ct flowTable, log zerolog.Logger) *flowCutter {
	c := &flowCutter{ct: ct, log: log}
	c.idle = sync.NewCond(&c.mu)
	return c
}

// cut queues the prefixes of entries and starts a run unless one is on.
func (c *flowCutter) cut(entries []Entry) {
	if c.ct == nil || len(entries) == 0 {
		return
	}
	c.mu.Lock()
	for _, e := range entries {
		c.queue = append(c.queue, e.Prefix)
	}
	start := !c.running
	c.running = true
	c.mu.Unlock()
	if start {
		go c.run()
	}
}

func (c *flowCutter) run() {
	var last time.Time
	for {
		if wait := cutEvery - time.Since(last); !last.IsZero() && wait > 0 {
			time.Sleep(wait) // gathers the bans of a flood into one dump
		}
		c.mu.Lock()
		ps := c.queue
		c.queue = nil
		if len(ps) == 0 {
			c.running = false
			c.idle.Broadcast()
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		last = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), cutTimeout)
		n, err := c.ct.DeleteFlows(ctx, ps)
		cancel()
		one := ""
		if len(ps) == 1 {
			one = PrefixString(ps[0])
		}
		switch {
		case err != nil:
			ev := c.log.Warn().Err(fmt.Errorf("%w: %w", ErrConntrack, err)).Int("blocked", len(ps))
			if one != "" {
				ev = ev.Str("ip", one)
			}
			ev.Msg("address blocked, established flows not cut")
		case n > 0:
			ev := c.log.Info().Int("flows", n).Int("blocked", len(ps))
			if one != "" {
				ev = ev.Str("ip", one)
			}
			ev.Msg("conntrack entries deleted")
		}
	}
}

// wait returns once nothing is queued or being deleted.
func (c *flowCutter) wait() {
	c.mu.Lock()
	for c.running {
		c.idle.Wait()
	}
	c.mu.Unlock()
}

// netlinkConntrack deletes conntrack entries over ctnetlink.
type netlinkConntrack struct{}

// maxDeleteErrors bounds the errors DeleteFlows collects.
const maxDeleteErrors = 3

// DeleteFlows dumps the conntrack table once and deletes each entry whose
// original source or reply destination (after NAT) is in one of prefixes.
// Entries that vanish between the dump and the delete are not errors.
func (netlinkConntrack) DeleteFlows(ctx context.Context, prefixes []netip.Prefix) (int, error) {
	match := newPrefixMatcher(prefixes)
	c, err := conntrack.Dial(nil)
	if err != nil {
		return 0, fmt.Errorf("open ctnetlink socket: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("dump conntrack table: %w", err)
	}
	deleted := 0
	var errs []error
	for _, fl := range flows {
		if !match.contains(fl.TupleOrig.IP.SourceAddress.Unmap()) && !match.contains(fl.TupleReply.IP.DestinationAddress.Unmap()) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		if err := c.Delete(fl); err != nil {
			if errors.Is(err, syscall.ENOENT) {
				continue
			}
			if len(errs) < maxDeleteErrors {
				errs = append(errs, fmt.Errorf("delete flow %s -> %s: %w",
					fl.TupleOrig.IP.SourceAddress, fl.TupleOrig.IP.DestinationAddress, err))
			}
			continue
		}
		deleted++
	}
	return deleted, errors.Join(errs...)
}

// prefixMatcher tells whether an address is in one of a set of prefixes:
// single addresses by a map lookup, networks one by one (a ban list holds
// few).
type prefixMatcher struct {
	addrs map[netip.Addr]bool
	nets  []netip.Prefix
}

func newPrefixMatcher(ps []netip.Prefix) prefixMatcher {
	m := prefixMatcher{addrs: make(map[netip.Addr]bool, len(ps))}
	for _, p := range ps {
		if p.IsSingleIP() {
			m.addrs[p.Addr()] = true
		} else {
			m.nets = append(m.nets, p)
		}
	}
	return m
}

func (m prefixMatcher) contains(a netip.Addr) bool {
	if m.addrs[a] {
		return true
	}
	for _, p := range m.nets {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
