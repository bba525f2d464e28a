// Package block decides which address to block for an alert and bans it.
//
// For an extension alert only an address Asterisk received the extension's
// packets from is ever blocked: the source of its live call as Asterisk
// saw it (Getvar CHANNEL(recvip) for chan_sip, CHANNEL(pjsip,remote_addr)
// for PJSIP), else the newest address it authenticated from (the alert's
// Sources). Never a contact: the client writes its Contact header, and
// would choose whom the guard blocks. For an address alert, the address.
//
// Use: one Blocker for the guard's life, then per alert
//
//	c := b.Choose(ctx, req, settings)   // before any hang-up: it reads the live call
//	res := b.Ban(ctx, req, c, settings) // the ban, through the ban manager
//
// and, after a secret rotation, b.Protect(ext, earlierAddrs, until) so that
// the real phone's failures with the old secret do not get its address
// blocked.
package block

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
)

// Getter sends an AMI action and returns its reply: the Do of an AMI
// session (*ami.Session fits). It is used for Getvar only.
type Getter interface {
	Do(ctx context.Context, a ami.Action) (ami.Response, error)
}

// Banner records and applies bans: *bans.Manager fits. Ban refuses a
// protected address with bans.ErrProtected and any ban in observe mode
// with bans.ErrObserving; Real reports whether its firewall really drops
// traffic (false for a dry run).
type Banner interface {
	Ban(ctx context.Context, req bans.Request) (bans.Ban, error)
	Real() bool
}

// Request is what an alert says about what to block.
type Request struct {
	// Addr is the address of an address alert (auth_failures,
	// failed_probes): it is the target as it is. Zero for an extension
	// alert.
	Addr netip.Addr
	// Extension is the extension of an extension alert.
	Extension ami.Extension
	// Live lists the extension's live channels the guard tracks.
	Live []string
	// Sources are the addresses Asterisk received the extension's
	// requests from (SuccessfulAuth), newest first.
	Sources []netip.Addr
	// Contacts are the addresses the extension's client says it is at
	// (its Contact header): never blocked, only named when nothing else
	// is known.
	Contacts []netip.Addr

	// What the ban records: the rule that raised the alert, why (the
	// firewall rule's comment too), how long it lasts (0: for good), and
	// the incident that decided it.
	Rule, Reason string
	TTL          time.Duration
	Incident     string
}

func (r *Request) isExtension() bool { return !r.Addr.IsValid() }

// Settings are the configuration a block runs with, taken per call.
type Settings struct {
	// Timeout is how long a Getvar may wait for its reply
	// (ami.action_timeout); 0: no limit but the context's.
	Timeout time.Duration
	// Retry is how a failed ban is retried.
	Retry action.Backoff
}

// From says where a target address came from.
type From uint8

// Where a target comes from.
const (
	FromNothing  From = iota // no target
	FromAlert                // the address of an address alert
	FromLiveCall             // Getvar on the extension's live channel
	FromSource               // the newest of the alert's Sources
)

// Target is the address to block and how it was found.
type Target struct {
	Addr netip.Addr
	From From
	// Channel and Variable are the channel and the variable Getvar read
	// the address from (FromLiveCall).
	Channel, Variable string
}

// Choice is what Choose picked: a target, or, with none, why not.
type Choice struct {
	Target Target
	// Why says why there is nothing to block (Target.Addr invalid),
	// naming any contact as client-supplied.
	Why string
}

// Skip says why a block was skipped.
type Skip uint8

// Why a block is skipped.
const (
	NotSkipped Skip = iota
	// SkipNoAddress: no address Asterisk received the extension's
	// requests from.
	SkipNoAddress
	// SkipNeverBlock: the address is never blocked (allow.networks,
	// response.never_block, the AMI server or the guard's own address).
	SkipNeverBlock
	// SkipRotated: an earlier address of an extension whose secret was
	// rotated: its failures are the real phone's, with the old secret.
	SkipRotated
	// SkipObserving: the ban manager is in observe mode.
	SkipObserving
)

// Result is the outcome of Ban.
type Result struct {
	action.Outcome
	Target Target
	// Ban is the ban as recorded (Done, Would, and Failed: recorded, not
	// applied yet).
	Ban  bans.Ban
	Skip Skip
}

// protection is an earlier address of a rotated extension.
type protection struct {
	until time.Time
	ext   string
}

// Blocker chooses and bans addresses. Safe for concurrent use.
type Blocker struct {
	get  Getter
	bans Banner
	now  func() time.Time

	mu        sync.Mutex
	protected map[netip.Addr]protection
}

// New returns a Blocker that reads live calls' addresses through g and
// bans through b.
func New(g Getter, b Banner) *Blocker {
	return &Blocker{get: g, bans: b, now: time.Now, protected: make(map[netip.Addr]protection)}
}

// SourceVariable is the channel variable that holds the address Asterisk
// received a call of tech from: CHANNEL(recvip) for chan_sip (the packet's
// source; CHANNEL(peerip) follows the client's Contact header with
// nat=no), CHANNEL(pjsip,remote_addr) for PJSIP (the transport's remote
// address, with its port); "" for others.
func SourceVariable(tech ami.Tech) string {
	switch tech {
	case ami.TechSIP:
		return "CHANNEL(recvip)"
	case ami.TechPJSIP:
		return "CHANNEL(pjsip,remote_addr)"
	}
	return ""
}

// Choose picks the address to block: an address alert's address; for an
// extension, the source of the first of its live channels Getvar answers
// for, else the newest of its Sources. Call it before hanging up the
// extension's calls: a channel gone has no address.
func (b *Blocker) Choose(ctx context.Context, req Request, s Settings) Choice {
	if !req.isExtension() {
		return Choice{Target: Target{Addr: req.Addr.Unmap(), From: FromAlert}}
	}
	v := SourceVariable(req.Extension.Tech)
	if v != "" {
		for _, ch := range req.Live {
			if addr, ok := b.channelAddr(ctx, ch, v, s); ok {
				return Choice{Target: Target{Addr: addr, From: FromLiveCall, Channel: ch, Variable: v}}
			}
		}
	}
	if len(req.Sources) > 0 {
		return Choice{Target: Target{Addr: req.Sources[0].Unmap(), From: FromSource}}
	}
	why := "no live call"
	switch {
	case len(req.Live) > 0 && v == "":
		why = fmt.Sprintf("Asterisk gives no source address for %s channels", req.Extension.Tech)
	case len(req.Live) > 0:
		why = fmt.Sprintf("no address from Getvar %s on its %d live channels", v, len(req.Live))
	}
	why = fmt.Sprintf("nothing to block: %s, and no address Asterisk received a request of %s from (SuccessfulAuth)", why, req.Extension)
	if len(req.Contacts) > 0 {
		why += "; contact " + joinAddrs(req.Contacts) + " is client-supplied, not blocked"
	}
	return Choice{Why: why}
}

// channelAddr asks Asterisk where it received channel's packets from.
func (b *Blocker) channelAddr(ctx context.Context, channel, variable string, s Settings) (netip.Addr, bool) {
	if !ami.ValidChannel(channel) {
		return netip.Addr{}, false
	}
	var resp ami.Response
	// Retried only while the session is not logged in yet (a guard just
	// started, or reconnecting, sees its first alert before its urgent
	// session is up): that fails at once. A Getvar that times out is not
	// tried again: the hang-up waits for the choice.
	err := action.Retry(ctx, s.Retry, func() error {
		actx, cancel := action.WithTimeout(ctx, s.Timeout)
		defer cancel()
		var err error
		resp, err = b.get.Do(actx, ami.Action{Name: "Getvar", Headers: []ami.Header{{Key: "Channel", Value: channel}, {Key: "Variable", Value: variable}}})
		if err != nil && !errors.Is(err, client.ErrNotConnected) {
			return fmt.Errorf("%w: %v", action.ErrPermanent, err) // not retried, whatever err is
		}
		return err
	})
	if err != nil {
		return netip.Addr{}, false
	}
	v := resp.Get("Value")
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return ap.Addr().Unmap(), true
	}
	if ad, err := netip.ParseAddr(v); err == nil && ad.Zone() == "" {
		return ad.Unmap(), true
	}
	return netip.Addr{}, false
}

// Describe says what Choose would pick, without asking Asterisk: for the
// outcome lines of observe mode.
func Describe(req Request) string {
	if !req.isExtension() {
		return req.Addr.String()
	}
	var parts []string
	if v := SourceVariable(req.Extension.Tech); v != "" && len(req.Live) > 0 {
		parts = append(parts, "its live call's address (Getvar "+v+")")
	}
	if len(req.Sources) > 0 {
		parts = append(parts, req.Sources[0].String())
	}
	if len(parts) == 0 {
		return "nothing: no address Asterisk received its requests from"
	}
	return strings.Join(parts, ", else ")
}

// Ban bans the chosen target for req.TTL, retrying as s says. Done: the
// firewall drops it; Would: recorded through a dry-run firewall, nothing
// dropped; Skipped: nothing to block, or a protected address (Skip says
// which); Failed: the ban is recorded and the ban manager re-applies it
// until the firewall accepts it.
func (b *Blocker) Ban(ctx context.Context, req Request, c Choice, s Settings) Result {
	res := Result{Outcome: action.Outcome{Action: action.BlockIP}, Target: c.Target}
	if !c.Target.Addr.IsValid() {
		res.Result, res.Skip, res.Detail = action.Skipped, SkipNoAddress, c.Why
		return res
	}
	addr := c.Target.Addr
	res.Outcome.Target = addr.String()
	if ext, ok := b.Protected(addr); ok {
		res.Result, res.Skip = action.Skipped, SkipRotated
		res.Detail = fmt.Sprintf("%s is an earlier address of %s, whose secret was rotated: its failures are the real phone still using the old secret; give the phone the new secret (from the secrets file)", addr, ext)
		return res
	}
	ext := ""
	if req.isExtension() {
		ext = req.Extension.String()
	}
	br := bans.Request{Addr: addr, TTL: req.TTL, Extension: ext, Rule: req.Rule, Reason: req.Reason, Incident: req.Incident}
	start := b.now()
	err := action.Retry(ctx, s.Retry, func() error {
		var err error
		res.Ban, err = b.bans.Ban(ctx, br)
		return err
	})
	res.Took = b.now().Sub(start)
	ttl := "for " + config.Duration(req.TTL).String()
	if req.TTL == 0 {
		ttl = "for good"
	}
	switch {
	case errors.Is(err, bans.ErrProtected):
		res.Result, res.Skip, res.Detail = action.Skipped, SkipNeverBlock, "never blocked: allow-listed, the AMI server or the guard's own address"
	case errors.Is(err, bans.ErrObserving):
		res.Result, res.Skip, res.Detail = action.Skipped, SkipObserving, "the mode changed to observe before the ban: nothing done"
	case err != nil:
		res.Result, res.Err, res.Retryable = action.Failed, err, action.Retryable(err)
		res.Detail = "the ban is recorded and re-applied until the firewall accepts it"
	case !b.bans.Real():
		res.Result, res.Detail = action.Would, "dry-run firewall: would drop "+dropped(addr, res.Ban)+" "+ttl
	default:
		res.Result, res.Detail = action.Done, "dropped "+ttl
		if t := res.Ban.Target(); t != addr.String() {
			res.Detail = "dropped " + dropped(addr, res.Ban) + " " + ttl
		}
	}
	return res
}

// dropped says what the ban of addr drops: the address, or the network
// holding it (an IPv6 address's /64, response.ipv6_prefix).
func dropped(addr netip.Addr, b bans.Ban) string {
	if t := b.Target(); b.Prefix.IsValid() && t != addr.String() {
		return t + " (the network of " + addr.String() + ")"
	}
	return addr.String()
}

// Protect keeps addrs, earlier addresses of the extension ext whose secret
// was rotated, from being blocked until until: the real phone there still
// uses the old secret and fails, which must not get the address (often an
// office's shared NAT) blocked.
func (b *Blocker) Protect(ext string, addrs []netip.Addr, until time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range addrs {
		b.protected[a.Unmap()] = protection{until: until, ext: ext}
	}
}

// Protected reports whether addr is protected by Protect now, and for
// which extension.
func (b *Blocker) Protected(addr netip.Addr) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.protected[addr.Unmap()]
	if ok && b.now().After(p.until) {
		delete(b.protected, addr.Unmap())
		return "", false
	}
	return p.ext, ok
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}
