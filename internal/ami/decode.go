package ami

import (
	"bytes"
	"net/netip"
	"strings"
)

// field names a header Decode reads.
type field uint8

const (
	fChannel field = iota
	fUniqueid
	fLinkedid
	fExten
	fContext
	fCallerIDNum
	fDestChannel
	fDestination // 1.8/11 Dial: the outbound channel
	fDestUniqueid
	fDestExten
	fDialString
	fDialStatus
	fCause
	fService
	fAccountID
	fSessionID
	fACLName
	fRemoteAddress
	fUsingPassword
	fPeer
	fPeerStatus
	fAddress
	fPort
	fEndpointName
	fContactStatus
	fURI
	fSubEvent
	fPrivilege
	nFields
)

// Decode keeps the fields it has seen in a uint32: this fails to compile
// when there are more than 32.
const _ = uint32(1) << (nFields - 1)

// fieldNames are the header names of the fields, in lower case.
var fieldNames = [nFields]string{
	fChannel: "channel", fUniqueid: "uniqueid", fLinkedid: "linkedid", fExten: "exten",
	fContext: "context", fCallerIDNum: "calleridnum", fDestChannel: "destchannel",
	fDestination: "destination", fDestUniqueid: "destuniqueid", fDestExten: "destexten",
	fDialString: "dialstring", fDialStatus: "dialstatus", fCause: "cause", fService: "service",
	fAccountID: "accountid", fSessionID: "sessionid", fACLName: "aclname",
	fRemoteAddress: "remoteaddress", fUsingPassword: "usingpassword", fPeer: "peer", fPeerStatus: "peerstatus", fAddress: "address",
	fPort: "port", fEndpointName: "endpointname", fContactStatus: "contactstatus", fURI: "uri",
	fSubEvent: "subevent", fPrivilege: "privilege",
}

// fieldDisplay are the header names as Asterisk spells them, for
// Event.ForgedField (constants: naming the field allocates nothing).
var fieldDisplay = [nFields]string{
	fChannel: "Channel", fUniqueid: "Uniqueid", fLinkedid: "Linkedid", fExten: "Exten",
	fContext: "Context", fCallerIDNum: "CallerIDNum", fDestChannel: "DestChannel",
	fDestination: "Destination", fDestUniqueid: "DestUniqueid", fDestExten: "DestExten",
	fDialString: "DialString", fDialStatus: "DialStatus", fCause: "Cause", fService: "Service",
	fAccountID: "AccountID", fSessionID: "SessionID", fACLName: "ACLName",
	fRemoteAddress: "RemoteAddress", fPeer: "Peer", fPeerStatus: "PeerStatus", fAddress: "Address",
	fPort: "Port", fEndpointName: "EndpointName", fContactStatus: "ContactStatus", fURI: "URI",
	fSubEvent: "SubEvent", fPrivilege: "Privilege",
}

// fieldBit is the bit of each field in the set of fields a message has:
// DestChannel and the 1.8/11 Destination are two spellings of one field.
var fieldBit = func() (t [nFields]uint32) {
	for f := range t {
		t[f] = 1 << f
	}
	t[fDestination] = t[fDestChannel]
	return t
}()

// fieldsByLen lists the fields by the length of their name.
var fieldsByLen = func() (t [14][]field) {
	for f, name := range fieldNames {
		t[len(name)] = append(t[len(name)], field(f))
	}
	return t
}()

// lookupField maps a header key (ASCII case ignored) to the field it fills.
func lookupField(key []byte) (field, bool) {
	if len(key) >= len(fieldsByLen) {
		return 0, false
	}
	for _, f := range fieldsByLen[len(key)] {
		if name := fieldNames[f]; lower(key[0]) == name[0] && equalFold(key, name) {
			return f, true
		}
	}
	return 0, false
}

// kindDial is the 1.8/11 Dial event, whose kind depends on its SubEvent.
const kindDial Kind = 255

// eventKind maps an Event: name (ASCII case ignored) to its kind.
func eventKind(name []byte) (Kind, SecurityType) {
	var buf [24]byte
	if len(name) > len(buf) {
		return KindUnknown, SecOther
	}
	for i, c := range name {
		buf[i] = lower(c)
	}
	switch string(buf[:len(name)]) {
	case "newchannel":
		return KindNewchannel, SecOther
	case "dialbegin":
		return KindDialBegin, SecOther
	case "dialend":
		return KindDialEnd, SecOther
	case "dial":
		return kindDial, SecOther
	case "hangup":
		return KindHangup, SecOther
	case "peerstatus":
		return KindPeerStatus, SecOther
	case "contactstatus":
		return KindContactStatus, SecOther
	case "fullybooted":
		return KindFullyBooted, SecOther
	case "invalidaccountid":
		return KindSecurity, SecInvalidAccountID
	case "failedacl":
		return KindSecurity, SecFailedACL
	case "invalidpassword":
		return KindSecurity, SecInvalidPassword
	case "challengeresponsefailed":
		return KindSecurity, SecChallengeResponseFailed
	case "challengesent":
		return KindSecurity, SecChallengeSent
	case "successfulauth":
		return KindSecurity, SecSuccessfulAuth
	case "requestnotallowed":
		return KindSecurity, SecRequestNotAllowed
	case "requestbadformat":
		return KindSecurity, SecRequestBadFormat
	}
	return KindUnknown, SecOther
}

// Decode fills ev (after resetting it) from m and reports whether m is an
// event the guard needs. It does not set ev.Time or ev.Seq.
//
// Event names and header names are compared ignoring ASCII case (they differ
// between Asterisk versions). Kinds and fields:
//   - Newchannel, Hangup: the channel snapshot (Channel, Uniqueid, Linkedid,
//     Exten, Context, CallerIDNum); Hangup also Cause (0 when absent or not
//     a number).
//   - DialBegin, DialEnd: the caller snapshot, DestChannel, DestUniqueid,
//     DestExten, and DialString or DialStatus. The 1.8/11 `Event: Dial` with
//     `SubEvent: Begin|End` gives the same kinds, with DestChannel from
//     Destination; any other SubEvent is not needed.
//   - The security events named by [SecurityType], and any other event whose
//     Privilege starts with the class security (as SecOther): Service,
//     AccountID, SessionID, ACLName, RemoteAddress split into RemoteAddr
//     and RemotePort, and UsingPassword (true only for `UsingPassword: 1`).
//   - PeerStatus: Peer, Status (from PeerStatus), Address (`ip:port`,
//     `[v6]:port` or a bare address; a Port header fills a missing port).
//   - ContactStatus: Peer (from EndpointName), Status (from ContactStatus),
//     the host and port of URI (`sip:300@127.0.0.5:5073;ob`).
//   - FullyBooted: the kind only.
//
// A message that carries one of the headers above more than once has been
// tampered with: a value Asterisk printed (a caller name, say) held a line
// break and the rest of it reads as headers. Asterisk itself never repeats
// them (the keys it does repeat, Output, ChanVariable and DestChanVariable,
// are not read here), nor sends both DestChannel and Destination, nor a
// Linkedid before the Uniqueid. Such a message is still decoded, the first
// value of each header kept, but ev.Forged is set and ev.ForgedField names
// the first repeated (or misplaced) header: it must not be used to blame
// anyone.
//
// Addresses that do not parse leave a zero netip.Addr and port 0; IPv4-mapped
// IPv6 addresses are unmapped. The strings of ev are copied out of m with one
// allocation shared by all of them. An event the guard does not need is
// rejected without allocating.
func Decode(m *Message, ev *Event) bool {
	ev.Reset()
	name := m.GetBytes("Event")
	if name == nil {
		return false
	}
	kind, sec := eventKind(name)
	if kind == KindUnknown && !isSecurityClass(m.GetBytes("Privilege")) {
		return false
	}
	var (
		vals   [nFields][]byte
		seen   uint32 // bit f: field f was read
		forged = nFields
	)
	for i := range m.hdrs {
		f, ok := lookupField(m.Key(i))
		if !ok {
			continue
		}
		if bit := fieldBit[f]; seen&bit == 0 {
			seen |= bit
			vals[f] = m.Value(i)
			// Asterisk 12+ writes Linkedid right after Uniqueid; 1.8 and
			// 11 write none. One before the Uniqueid came from a value
			// printed earlier (the caller name): on 11, where it is not
			// repeated, it would otherwise make an extension's call look
			// like a leg of another call.
			if f == fLinkedid && seen&fieldBit[fUniqueid] == 0 && forged == nFields {
				forged = f
			}
		} else if forged == nFields {
			forged = f
		}
	}
	switch kind {
	case kindDial:
		switch sub := vals[fSubEvent]; {
		case equalFold(sub, "Begin"):
			kind = KindDialBegin
		case equalFold(sub, "End"):
			kind = KindDialEnd
		default:
			return false
		}
		if vals[fDestChannel] == nil {
			vals[fDestChannel] = vals[fDestination]
		}
	case KindUnknown:
		kind = KindSecurity
	}
	ev.Kind = kind
	if forged < nFields {
		ev.Forged, ev.ForgedField = true, fieldDisplay[forged]
	}
	var addr string // the address text, parsed below without another allocation
	switch kind {
	case KindNewchannel, KindHangup:
		fill(target{vals[fChannel], &ev.Channel}, target{vals[fUniqueid], &ev.Uniqueid},
			target{vals[fLinkedid], &ev.Linkedid}, target{vals[fExten], &ev.Exten},
			target{vals[fContext], &ev.Context}, target{vals[fCallerIDNum], &ev.CallerIDNum})
		if kind == KindHangup {
			ev.Cause = parseCause(vals[fCause])
		}
	case KindDialBegin, KindDialEnd:
		fill(target{vals[fChannel], &ev.Channel}, target{vals[fUniqueid], &ev.Uniqueid},
			target{vals[fLinkedid], &ev.Linkedid}, target{vals[fExten], &ev.Exten},
			target{vals[fContext], &ev.Context}, target{vals[fCallerIDNum], &ev.CallerIDNum},
			target{vals[fDestChannel], &ev.DestChannel}, target{vals[fDestUniqueid], &ev.DestUniqueid},
			target{vals[fDestExten], &ev.DestExten}, target{vals[fDialString], &ev.DialString},
			target{vals[fDialStatus], &ev.DialStatus})
	case KindSecurity:
		ev.Security = sec
		a, port := splitRemoteAddress(vals[fRemoteAddress])
		fill(target{vals[fService], &ev.Service}, target{vals[fAccountID], &ev.AccountID},
			target{vals[fSessionID], &ev.SessionID}, target{vals[fACLName], &ev.ACLName}, target{a, &addr})
		ev.RemoteAddr, ev.RemotePort = parseAddr(addr, port)
		ev.UsingPassword = bytes.Equal(bytes.TrimSpace(vals[fUsingPassword]), []byte("1"))
	case KindPeerStatus:
		a, port := splitHostPort(bytes.TrimSpace(vals[fAddress]))
		fill(target{vals[fPeer], &ev.Peer}, target{vals[fPeerStatus], &ev.Status}, target{a, &addr})
		if port == 0 {
			port, _ = parsePort(vals[fPort])
		}
		ev.Addr, ev.Port = parseAddr(addr, port)
	case KindContactStatus:
		a, port := splitURIHost(vals[fURI])
		fill(target{vals[fEndpointName], &ev.Peer}, target{vals[fContactStatus], &ev.Status}, target{a, &addr})
		ev.Addr, ev.Port = parseAddr(addr, port)
	}
	return true
}

// isSecurityClass reports whether a Privilege value's first class is security.
func isSecurityClass(p []byte) bool {
	if i := bytes.IndexByte(p, ','); i >= 0 {
		p = p[:i]
	}
	return equalFold(bytes.TrimSpace(p), "security")
}

// target is a value to copy into a string of an Event.
type target struct {
	val []byte
	dst *string
}

// fill copies the values of the targets into their strings with one
// allocation: the strings are slices of one new string.
func fill(ts ...target) {
	n := 0
	for _, t := range ts {
		n += len(t.val)
	}
	if n == 0 {
		return
	}
	var b strings.Builder
	b.Grow(n)
	for _, t := range ts {
		b.Write(t.val)
	}
	s, off := b.String(), 0
	for _, t := range ts {
		end := off + len(t.val)
		*t.dst = s[off:end]
		off = end
	}
}

// parseCause parses a hangup cause; anything but 1 to 3 digits gives 0.
func parseCause(b []byte) int {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || len(b) > 3 {
		return 0
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// parsePort parses a decimal port 0-65535.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 {
		return 0, false
	}
	n, ok := atoi(b)
	if !ok || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}

// parseAddr parses an IP address (brackets allowed) and returns it, with
// IPv4-mapped IPv6 addresses unmapped, and port; or a zero Addr and port 0
// if it is not an address.
func parseAddr(s string, port uint16) (netip.Addr, uint16) {
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		s = s[1 : len(s)-1]
	}
	if s == "" || len(s) > 64 {
		return netip.Addr{}, 0
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, 0
	}
	return a.Unmap(), port
}

// splitRemoteAddress splits a security event address
// `IPV4|IPV6/<transport>/<addr>/<port>`: the port is the last part, the
// address the one before (IPv6 comes without brackets). A bad port gives 0.
func splitRemoteAddress(b []byte) ([]byte, uint16) {
	i := bytes.LastIndexByte(b, '/')
	if i < 0 {
		return nil, 0
	}
	j := bytes.LastIndexByte(b[:i], '/')
	port, _ := parsePort(b[i+1:])
	return b[j+1 : i], port
}

// splitHostPort splits `host:port` or `[ipv6]:port`; a host without a port
// (`127.0.0.1`, `[::1]` or a bare IPv6 address, which has two colons or
// more) gives port 0, and so does a bad port.
func splitHostPort(b []byte) ([]byte, uint16) {
	if len(b) > 0 && b[0] == '[' {
		j := bytes.IndexByte(b, ']')
		if j < 0 {
			return nil, 0
		}
		rest := b[j+1:]
		if len(rest) == 0 {
			return b[1:j], 0
		}
		if rest[0] != ':' {
			return nil, 0
		}
		port, _ := parsePort(rest[1:])
		return b[1:j], port
	}
	i := bytes.LastIndexByte(b, ':')
	if i < 0 || bytes.IndexByte(b[:i], ':') >= 0 {
		return b, 0
	}
	port, _ := parsePort(b[i+1:])
	return b[:i], port
}

// splitURIHost returns the host and port of a SIP URI such as
// `sip:300@127.0.0.5:5073;ob` or `<sips:[2001:db8::1]:5061>`.
func splitURIHost(b []byte) ([]byte, uint16) {
	b = bytes.TrimSpace(b)
	if i := bytes.IndexByte(b, '<'); i >= 0 {
		b = b[i+1:]
	}
	if i := bytes.IndexByte(b, ':'); i >= 0 && (equalFold(b[:i], "sip") || equalFold(b[:i], "sips")) {
		b = b[i+1:]
	}
	if i := bytes.IndexByte(b, '@'); i >= 0 {
		b = b[i+1:]
	}
	if i := bytes.IndexAny(b, ";?>"); i >= 0 {
		b = b[:i]
	}
	return splitHostPort(b)
}
