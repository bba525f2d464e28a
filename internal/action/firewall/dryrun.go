package firewall

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"github.com/rs/zerolog"
)

// DryRun is a Firewall that only logs what it would do. It remembers the
// blocked addresses so Blocked reflects Block and Unblock. It validates
// addresses like IPTables does. Safe for concurrent use.
type DryRun struct {
	log     zerolog.Logger
	mu      sync.Mutex
	blocked map[netip.Addr]string // address -> comment
}

var _ Firewall = (*DryRun)(nil)

// NewDryRun returns a DryRun logging to log.
func NewDryRun(log zerolog.Logger) *DryRun {
	return &DryRun{
		log:     log.With().Str("component", "firewall").Bool("dry_run", true).Logger(),
		blocked: make(map[netip.Addr]string),
	}
}

// Setup logs; it keeps the remembered blocks, like KeepRulesOnSetup.
func (d *DryRun) Setup(ctx context.Context) error {
	d.log.Info().Msg("would set up chain and jump")
	return nil
}

// Block remembers addr.
func (d *DryRun) Block(ctx context.Context, addr netip.Addr, comment string) error {
	a, err := NormalizeAddr(addr)
	if err != nil {
		return &Error{Op: "block", Err: err}
	}
	comment = SanitizeComment(comment)
	d.mu.Lock()
	d.blocked[a] = comment
	d.mu.Unlock()
	d.log.Warn().Str("ip", a.String()).Str("comment", comment).Msg("would block address")
	return nil
}

// Unblock forgets addr.
func (d *DryRun) Unblock(ctx context.Context, addr netip.Addr) error {
	a, err := NormalizeAddr(addr)
	if err != nil {
		return &Error{Op: "unblock", Err: err}
	}
	d.mu.Lock()
	delete(d.blocked, a)
	d.mu.Unlock()
	d.log.Info().Str("ip", a.String()).Msg("would unblock address")
	return nil
}

// Blocked returns the remembered addresses, sorted.
func (d *DryRun) Blocked(ctx context.Context) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]netip.Addr, 0, len(d.blocked))
	for a := range d.blocked {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// Rules is Blocked: a dry run has no chain, only what it remembers.
func (d *DryRun) Rules(ctx context.Context) ([]netip.Addr, error) { return d.Blocked(ctx) }

// Real is false: a dry run drops nothing.
func (d *DryRun) Real() bool { return false }

// Teardown forgets everything.
func (d *DryRun) Teardown(ctx context.Context) error {
	d.mu.Lock()
	clear(d.blocked)
	d.mu.Unlock()
	d.log.Info().Msg("would remove jump and chain")
	return nil
}
