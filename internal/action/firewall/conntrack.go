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

// DeleteFlows dumps the conntrack table and deletes each entry whose
// original source or reply destination (after NAT) is addr. Entries that
// vanish between the dump and the delete are not errors.
func (netlinkConntrack) DeleteFlows(ctx context.Context, addr netip.Addr) (int, error) {
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
		if !flowMatches(fl, addr) {
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

func flowMatches(fl conntrack.Flow, addr netip.Addr) bool {
	return fl.TupleOrig.IP.SourceAddress.Unmap() == addr ||
		fl.TupleReply.IP.DestinationAddress.Unmap() == addr
}
