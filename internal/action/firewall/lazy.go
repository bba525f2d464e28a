package firewall

import (
	"context"
	"net/netip"
	"sync"
)

// Lazy is a Firewall built on first use, and built again at every later use
// until building works. A guard whose iptables is missing or refused at
// start must not stop: hang-ups and rotations go on, the bans are recorded
// and re-applied once the firewall can be built (the administrator installs
// iptables, loads a module). An observe-mode guard never uses its firewall,
// so it never needs iptables at all.
type Lazy struct {
	build func() (Firewall, error)
	real  bool

	mu sync.Mutex
	fw Firewall
}

var _ Firewall = (*Lazy)(nil)

// NewLazy returns a Firewall that calls build when first used. real is what
// Real reports before the firewall is built (the configuration says whether
// it will drop traffic).
func NewLazy(build func() (Firewall, error), real bool) *Lazy {
	return &Lazy{build: build, real: real}
}

// get returns the built firewall, building it if needed. A failure is an
// *Error of operation "init" that keeps the cause's classification.
func (l *Lazy) get() (Firewall, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fw != nil {
		return l.fw, nil
	}
	fw, err := l.build()
	if err != nil {
		if _, ok := err.(*Error); ok {
			return nil, err
		}
		return nil, &Error{Op: "init", Err: err}
	}
	l.fw = fw
	return fw, nil
}

// Setup builds the firewall if needed, then sets it up.
func (l *Lazy) Setup(ctx context.Context) error {
	fw, err := l.get()
	if err != nil {
		return err
	}
	return fw.Setup(ctx)
}

// Block builds the firewall if needed, then blocks the entries.
func (l *Lazy) Block(ctx context.Context, entries ...Entry) error {
	fw, err := l.get()
	if err != nil {
		return err
	}
	return fw.Block(ctx, entries...)
}

// Unblock builds the firewall if needed, then unblocks the prefixes.
func (l *Lazy) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	fw, err := l.get()
	if err != nil {
		return err
	}
	return fw.Unblock(ctx, prefixes...)
}

// Blocked builds the firewall if needed, then lists what it drops.
func (l *Lazy) Blocked(ctx context.Context) ([]Entry, error) {
	fw, err := l.get()
	if err != nil {
		return nil, err
	}
	return fw.Blocked(ctx)
}

// Rules builds the firewall if needed, then lists our chain's rules.
func (l *Lazy) Rules(ctx context.Context) ([]netip.Prefix, error) {
	fw, err := l.get()
	if err != nil {
		return nil, err
	}
	return fw.Rules(ctx)
}

// Real reports whether the firewall drops traffic (as configured, before it
// is built).
func (l *Lazy) Real() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fw != nil {
		return l.fw.Real()
	}
	return l.real
}

// Teardown tears down a firewall that was built; one never built has
// nothing to remove.
func (l *Lazy) Teardown(ctx context.Context) error {
	l.mu.Lock()
	fw := l.fw
	l.mu.Unlock()
	if fw == nil {
		return nil
	}
	return fw.Teardown(ctx)
}
