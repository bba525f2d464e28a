package firewall

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"github.com/rs/zerolog"
)

// DryRun is a Firewall that only logs what it would do. It remembers the
// blocked prefixes so Blocked reflects Block and Unblock. It validates
// prefixes like IPSet and IPTables do. Safe for concurrent use.
type DryRun struct {
	log     zerolog.Logger
	mu      sync.Mutex
	blocked map[netip.Prefix]string // prefix -> comment
}

var _ Firewall = (*DryRun)(nil)

// NewDryRun returns a DryRun logging to log.
func NewDryRun(log zerolog.Logger) *DryRun {
	return &DryRun{
		log:     log.With().Str("component", "firewall").Bool("dry_run", true).Logger(),
		blocked: make(map[netip.Prefix]string),
	}
}

// Setup logs; it keeps the remembered blocks, like KeepRulesOnSetup.
func (d *DryRun) Setup(ctx context.Context) error {
	d.log.Info().Msg("would set up chain and jump")
	return nil
}

// Block remembers the entries' prefixes; an invalid one refuses the whole
// batch.
func (d *DryRun) Block(ctx context.Context, entries ...Entry) error {
	ps := make([]netip.Prefix, len(entries))
	for i, e := range entries {
		p, err := NormalizePrefix(e.Prefix)
		if err != nil {
			return &Error{Op: "block", Err: err}
		}
		ps[i] = p
	}
	d.mu.Lock()
	for i, e := range entries {
		d.blocked[ps[i]] = SanitizeComment(e.Comment)
	}
	d.mu.Unlock()
	if len(entries) == 1 {
		d.log.Warn().Str("ip", PrefixString(ps[0])).Str("comment", SanitizeComment(entries[0].Comment)).Msg("would block address")
	} else if len(entries) > 1 {
		d.log.Warn().Int("count", len(entries)).Msg("would block addresses")
	}
	return nil
}

// Unblock forgets the prefixes.
func (d *DryRun) Unblock(ctx context.Context, prefixes ...netip.Prefix) error {
	for _, p := range prefixes {
		n, err := NormalizePrefix(p)
		if err != nil {
			return &Error{Op: "unblock", Err: err}
		}
		d.mu.Lock()
		delete(d.blocked, n)
		d.mu.Unlock()
		d.log.Info().Str("ip", PrefixString(n)).Msg("would unblock address")
	}
	return nil
}

// Blocked returns the remembered prefixes, sorted.
func (d *DryRun) Blocked(ctx context.Context) ([]Entry, error) {
	ps, _ := d.Rules(ctx)
	return entriesOf(ps), nil
}

// Rules returns the remembered prefixes, sorted: a dry run has no chain,
// only what it remembers.
func (d *DryRun) Rules(ctx context.Context) ([]netip.Prefix, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]netip.Prefix, 0, len(d.blocked))
	for p := range d.blocked {
		out = append(out, p)
	}
	slices.SortFunc(out, ComparePrefix)
	return out, nil
}

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
