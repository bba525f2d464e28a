package firewall

import (
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// batchChunk is how many ipset add messages go in one sendmsg: some 40
// KiB; batchTimeout bounds the wait for the kernel's answers.
const (
	batchChunk   = 512
	batchTimeout = 10 * time.Second
)

// netlinkSets is the setTable of the kernel: a *netlink.Handle, and for
// IpsetAddMany a netlink socket of its own that sends many add messages at
// once. The netlink library sends one message and waits for its answer
// each time: two system calls and a wake-up per entry, most of the time of
// a restore of 100,000 bans.
type netlinkSets struct {
	*netlink.Handle

	mu   sync.Mutex
	sock *nl.NetlinkSocket // opened at the first batch
}

// IpsetAddMany adds entries to set, renewing those there already (as
// IpsetAdd with Replace), batchChunk messages per sendmsg. The kernel
// answers only a failed message, and the last of each chunk, which asks
// for an acknowledgement: one receive per chunk when all goes well. The
// first entry refused is returned, naming it; the other entries are added
// all the same. A failure of the socket stops at once.
func (s *netlinkSets) IpsetAddMany(set string, entries []netlink.IPSetEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sock == nil {
		sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(batchTimeout))
		if err := sock.SetReceiveTimeout(&tv); err != nil {
			sock.Close()
			return err
		}
		s.sock = sock
	}
	var first error
	for len(entries) > 0 {
		n := min(len(entries), batchChunk)
		refused, err := s.addChunk(set, entries[:n])
		if err != nil {
			return err
		}
		if first == nil {
			first = refused
		}
		entries = entries[n:]
	}
	return first
}

// addChunk sends one chunk; refused is the first entry the kernel refused,
// err a failure of the socket (the chunk's fate unknown).
func (s *netlinkSets) addChunk(set string, entries []netlink.IPSetEntry) (refused, err error) {
	var buf []byte
	seqs := make(map[uint32]int, len(entries))
	var last uint32
	for i := range entries {
		flags := 0
		if i == len(entries)-1 {
			flags = unix.NLM_F_ACK
		}
		req := addRequest(set, &entries[i], flags)
		buf = append(buf, req.Serialize()...)
		seqs[req.Seq] = i
		last = req.Seq
	}
	if err := unix.Sendto(s.sock.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		s.reset()
		return nil, fmt.Errorf("send %d ipset adds: %w", len(entries), err)
	}
	pid, err := s.sock.GetPid()
	if err != nil {
		s.reset()
		return nil, err
	}
	for {
		msgs, from, err := s.sock.Receive()
		if err != nil {
			s.reset() // answers may be left on it: never read them as the next chunk's
			return refused, fmt.Errorf("receive the answers to %d ipset adds: %w", len(entries), err)
		}
		if from.Pid != nl.PidKernel {
			continue
		}
		for _, m := range msgs {
			if m.Header.Pid != pid || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			i, ours := seqs[m.Header.Seq]
			if !ours {
				continue
			}
			if errno := int32(nl.NativeEndian().Uint32(m.Data[0:4])); errno != 0 && refused == nil {
				refused = fmt.Errorf("%s: %w", net.IP(entries[i].IP), ipsetErrno(-errno))
			}
			if m.Header.Seq == last {
				return refused, nil
			}
		}
	}
}

// reset closes the batch socket; the next batch opens another.
func (s *netlinkSets) reset() {
	s.sock.Close()
	s.sock = nil
}

// ipsetErrno is the error of a kernel answer, as the netlink library
// gives it: ipset's own codes as nl.IPSetError, the others as an errno.
func ipsetErrno(errno int32) error {
	if errno >= nl.IPSET_ERR_PRIVATE {
		return nl.IPSetError(uintptr(errno))
	}
	return syscall.Errno(errno)
}

// addRequest is the IPSET_CMD_ADD message of e in set, without
// NLM_F_EXCL (an entry there already has its timeout renewed), with the
// extra flags.
func addRequest(set string, e *netlink.IPSetEntry, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(nl.IPSET_CMD_ADD|(unix.NFNL_SUBSYS_IPSET<<8), flags)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(unix.AF_NETLINK), Version: nl.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_PROTOCOL, nl.Uint8Attr(nl.IPSET_PROTOCOL)))
	req.AddData(nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated(set)))
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|int(nl.NLA_F_NESTED), nil)
	if e.Timeout != nil {
		data.AddChild(&nl.Uint32Attribute{Type: nl.IPSET_ATTR_TIMEOUT | nl.NLA_F_NET_BYTEORDER, Value: *e.Timeout})
	}
	typ := nl.IPSET_ATTR_IPADDR_IPV6
	ip := e.IP
	if ip4 := ip.To4(); ip4 != nil {
		typ, ip = nl.IPSET_ATTR_IPADDR_IPV4, ip4
	}
	addr := nl.NewRtAttr(typ|int(nl.NLA_F_NET_BYTEORDER), ip)
	data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_IP|int(nl.NLA_F_NESTED), addr.Serialize()))
	if e.CIDR != 0 {
		data.AddChild(nl.NewRtAttr(nl.IPSET_ATTR_CIDR, nl.Uint8Attr(e.CIDR)))
	}
	req.AddData(data)
	return req
}
