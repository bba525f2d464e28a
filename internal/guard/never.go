package guard

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/hostaddr"
)

// lookupFunc resolves a host name, as net.Resolver.LookupNetIP does.
type lookupFunc func(ctx context.Context, network, host string) ([]netip.Addr, error)

// resolveTimeout bounds one resolution of ami.address's host: a reload
// waits for it.
const resolveTimeout = 3 * time.Second

// NeverBlock returns every network the guard run with cfg never blocks:
// allow.networks and response.never_block, the AMI server's addresses and
// the address the guard reaches each of them from. When the host of
// ami.address does not resolve, the error says so and the list holds the
// rest (what the guard starts with; it tries again later).
func NeverBlock(ctx context.Context, cfg *config.Config) ([]netip.Prefix, error) {
	hostport, _ := cfg.AMI.Endpoint()
	ami, err := amiAddresses(ctx, hostport, net.DefaultResolver.LookupNetIP)
	return append(cfg.NeverBlock(), ami...), err
}

// amiAddresses returns the AMI server's addresses (address is host:port,
// without tls://; a host name is resolved with lookup) and the local
// address the kernel picks to reach each (no packet is sent).
func amiAddresses(ctx context.Context, address string, lookup lookupFunc) ([]netip.Prefix, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("ami.address: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	out, err := hostaddr.Protect(ctx, host, port, hostaddr.Lookup(lookup))
	if err != nil {
		return nil, fmt.Errorf("ami.address: cannot resolve %s: %w", host, err)
	}
	return out, nil
}

// neverState is what the guard protects from its own bans: the
// configuration's networks and the AMI server's addresses. The host of
// ami.address is resolved at start and again at every reload, and at every
// AMI connect until it first resolves: a guard must not refuse to start
// because DNS is down, so it starts with the configured networks, says
// loudly that the AMI server is not protected yet, and protects it as soon
// as the name resolves. Every address it ever resolved to stays protected.
type neverState struct {
	mu       sync.Mutex // held while the ban manager is given the list, so lists land in order
	resolved bool       // ami.address has resolved at least once
	ami      []netip.Prefix
	current  []netip.Prefix // the list last computed
}

// refreshNever resolves ami.address again and returns the networks never
// blocked under the running configuration, giving them to the ban manager
// when apply is set. why says when it runs ("start", "reload", "connect").
func (g *Guard) refreshNever(ctx context.Context, why string, apply bool) []netip.Prefix {
	n := &g.never
	n.mu.Lock()
	defer n.mu.Unlock()
	cfg := g.cfg.Load()
	hostport, _ := cfg.AMI.Endpoint()
	ami, err := amiAddresses(ctx, hostport, g.lookup)
	if err != nil {
		ev := g.log.Error()
		msg := "the AMI server's address does not resolve: it is not protected from a ban until it does (tried again at every reload and AMI connect)"
		if n.resolved {
			ev = g.log.Warn()
			msg = "the AMI server's address does not resolve now: the addresses it had stay protected"
		}
		ev.Str("component", "guard").Str("config", g.opts.ConfigFile).Str("key", "ami.address").Str("when", why).Err(err).Msg(msg)
	} else {
		if !n.resolved && why != "start" {
			g.log.Warn().Str("component", "guard").Str("config", g.opts.ConfigFile).Str("key", "ami.address").Str("when", why).
				Msg("the AMI server's address resolves now: it is protected from a ban")
		}
		n.resolved = true
	}
	for _, p := range ami {
		if !slices.Contains(n.ami, p) {
			n.ami = append(n.ami, p)
		}
	}
	n.current = append(cfg.NeverBlock(), n.ami...)
	if apply {
		g.bans.SetNever(n.current)
	}
	return slices.Clone(n.current)
}

// neverResolved reports whether ami.address has resolved.
func (g *Guard) neverResolved() bool {
	g.never.mu.Lock()
	defer g.never.mu.Unlock()
	return g.never.resolved
}

// protected returns the networks the ban manager was last given.
func (g *Guard) protected() []netip.Prefix {
	g.never.mu.Lock()
	defer g.never.mu.Unlock()
	return slices.Clone(g.never.current)
}
