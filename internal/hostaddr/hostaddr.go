// Package hostaddr finds the addresses the guard must never block to keep
// talking to a server it depends on (the AMI host, the CrowdSec Local
// API): the server's own addresses and the local address the kernel picks
// to reach each.
package hostaddr

import (
	"context"
	"net"
	"net/netip"
	"slices"
)

// Lookup resolves a host name (net.DefaultResolver.LookupNetIP).
type Lookup func(ctx context.Context, network, host string) ([]netip.Addr, error)

// Protect returns host's addresses (host itself when it is an address, else
// what lookup gives) and, for each, the local address the kernel routes
// from towards port, each as a single-address prefix, without duplicates.
// No packet is sent. The error is lookup's.
func Protect(ctx context.Context, host, port string, lookup Lookup) ([]netip.Prefix, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if addrs, err = lookup(ctx, "ip", host); err != nil {
		return nil, err
	}
	var out []netip.Prefix
	add := func(a netip.Addr) {
		a = a.Unmap().WithZone("")
		if p := netip.PrefixFrom(a, a.BitLen()); p.IsValid() && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, a := range addrs {
		add(a)
		if c, err := net.Dial("udp", net.JoinHostPort(a.String(), port)); err == nil {
			if la, ok := c.LocalAddr().(*net.UDPAddr); ok {
				if l, ok := netip.AddrFromSlice(la.IP); ok {
					add(l)
				}
			}
			c.Close()
		}
	}
	return out, nil
}
