package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/ti-mo/conntrack"
)

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
