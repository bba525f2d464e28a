package guard

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
)

// The guard's two AMI sessions: "events" reads the event stream and sends
// the configuration and Getvar actions; "urgent" has events off and sends
// only hang-ups, so that a hang-up never waits behind a slow UpdateConfig
// (Asterisk runs one session's actions one after another).

// skipUnwanted skips, by name on the reader goroutine and unseen (unless
// recording), every event the detector does not use.
func skipUnwanted(name []byte) bool { return !ami.UsedEvent(name) }

// incoming is one message queued from the AMI reader to the detector loop.
type incoming struct {
	ev  *ami.Event // decoded, from eventPool; nil: a message only recorded
	raw []byte     // the message as received, when recording
	at  time.Time  // when the read that completed it returned
}

// eventPool recycles the decoded events between the reader and the loop,
// so that queueing an event does not allocate once the pool is warm.
var eventPool = sync.Pool{New: func() any { return new(ami.Event) }}

// dialAMI starts both sessions. They log in in the background and again
// after every loss; each login of the event session triggers a resync.
func (g *Guard) dialAMI(cfg *config.Config, record bool) error {
	tlsCfg, err := cfg.AMI.TLSConfig()
	if err != nil {
		return err
	}
	base := client.Options{
		Address: cfg.AMI.Address, Username: cfg.AMI.Username, Secret: cfg.AMI.Secret.Reveal(),
		Auth: client.Auth(cfg.AMI.Auth), TLS: tlsCfg,
		ActionTimeout:     time.Duration(cfg.AMI.ActionTimeout),
		ReconnectInterval: time.Duration(cfg.AMI.ReconnectInterval),
		ReconnectMax:      time.Duration(cfg.AMI.ReconnectMax),
		Keepalive:         time.Duration(cfg.AMI.Keepalive),
		Logger:            g.log,
	}
	ev := base
	ev.Name, ev.Events = "events", "call,security,system"
	ev.SilenceAlarm = time.Duration(cfg.Metrics.SilenceAlarm)
	ev.OnConnect = g.eventsLoggedIn
	if record {
		// Everything as received, before any filtering: the Tap sees every
		// message and queues it; nothing is skipped.
		ev.Tap = g.takeRecorded
	} else {
		ev.Handler, ev.Skip = g.takeEvent, skipUnwanted
	}
	if g.events, err = client.New(ev); err != nil {
		return err
	}
	ur := base
	ur.Name, ur.Events = "urgent", "off"
	if g.urgent, err = client.New(ur); err != nil {
		g.events.Close()
		return err
	}
	return nil
}

// takeEvent is the event session's handler, on its reader goroutine: it
// decodes the events the detector uses and queues them, never blocking.
func (g *Guard) takeEvent(m *ami.Message, at time.Time) {
	ev := eventPool.Get().(*ami.Event)
	if !ami.Decode(m, ev) {
		eventPool.Put(ev)
		return
	}
	g.push(incoming{ev: ev, at: at})
}

// takeRecorded is the event session's tap when recording: every message is
// queued with a copy of its bytes (secrets in replies redacted), decoded
// too when it is a wanted event.
func (g *Guard) takeRecorded(m *ami.Message, at time.Time) {
	in := incoming{raw: recorded(m), at: at}
	if m.IsEvent() && ami.UsedEvent(m.Value(0)) {
		ev := eventPool.Get().(*ami.Event)
		if ami.Decode(m, ev) {
			in.ev = ev
		} else {
			eventPool.Put(ev)
		}
	}
	g.push(in)
}

// push queues in, or drops and counts it when the queue is full.
func (g *Guard) push(in incoming) {
	select {
	case g.queue <- in:
		g.stats.queued.Add(1)
	default:
		if in.ev != nil {
			eventPool.Put(in.ev)
		}
		g.dropped(g.stats.dropped.Add(1))
	}
}

// eventsLoggedIn runs after every login of the event session: it asks the
// resync loop to rebuild the view, and says once per version what this
// Asterisk's AMI does not show.
func (g *Guard) eventsLoggedIn(banner string) {
	select {
	case g.connect <- struct{}{}:
	default:
	}
	if major, _, _ := client.ParseVersion(banner); major == 1 && !g.warnedOld.Swap(true) {
		g.log.Warn().Str("component", "guard").Str("banner", banner).
			Msg("this Asterisk (before 12) sends no security events over AMI: password guessing, refused calls and the addresses " +
				"extensions authenticate from are invisible; only calls and registrations are watched (upgrade Asterisk, or run fail2ban on its security log)")
	}
}

// The AMI versions that tell what an Asterisk can do: AMI 1.1 is Asterisk
// 1.8, 1.3 is 11, 2.x 12 and 13, 5.x 16, 10.x 21. Unknown (0.0) counts as
// new.

// hasSIPpeers reports whether chan_sip can exist: gone from Asterisk 21
// (AMI 10). Sending SIPpeers there raises a RequestBadFormat security event
// at Error severity on every connect.
func hasSIPpeers(major int) bool { return major < 10 }

// hasPJSIPShowContacts reports whether PJSIPShowContacts exists (Asterisk
// 16, AMI 5, and later).
func hasPJSIPShowContacts(major int) bool { return major == 0 || major >= 5 }

// liveChannel is one CoreShowChannels item as the detector takes it, on
// every version (Response.Get ignores case: Asterisk 11 spells UniqueID).
func liveChannel(it ami.Response) detector.LiveChannel {
	return detector.LiveChannelFrom(it.Get)
}

// rebuild asks Asterisk what is up now: the live channels, the chan_sip
// peers' and the PJSIP contacts' addresses, as far as this version has them.
func (g *Guard) rebuild(ctx context.Context, full bool) resyncItem {
	log := g.log.With().Str("component", "resync").Logger()
	var it resyncItem
	_, items, err := g.events.List(ctx, ami.Action{Name: "CoreShowChannels"})
	if err != nil {
		log.Error().Err(err).Msg("CoreShowChannels failed: live calls not rebuilt")
	} else {
		it.listed = true
		for _, c := range items {
			it.live = append(it.live, liveChannel(c))
		}
	}
	if !full {
		return it
	}
	major, _ := g.events.Version()
	if hasSIPpeers(major) {
		if _, peers, err := g.events.List(ctx, ami.Action{Name: "SIPpeers"}); err == nil {
			for _, p := range peers {
				if a, perr := netip.ParseAddr(p.Get("IPaddress")); perr == nil && ami.ValidName(p.Get("ObjectName")) {
					// Only a dynamic peer's address comes from a registration
					// Asterisk accepted; a static one's is its configured host
					// (a trunk), which proves no secret.
					status := "Reachable"
					if p.Get("Dynamic") == "yes" {
						status = "Registered"
					}
					it.hints = append(it.hints, ami.Event{Kind: ami.KindPeerStatus, Peer: "SIP/" + p.Get("ObjectName"), Status: status, Addr: a.Unmap()})
				}
			}
		}
	}
	if hasPJSIPShowContacts(major) {
		if _, contacts, err := g.events.List(ctx, ami.Action{Name: "PJSIPShowContacts"}); err == nil {
			for _, c := range contacts {
				if a, perr := netip.ParseAddr(c.Get("ViaAddr")); perr == nil && ami.ValidName(c.Get("Endpoint")) {
					it.hints = append(it.hints, ami.Event{Kind: ami.KindContactStatus, Peer: c.Get("Endpoint"), Status: "Reachable", Addr: a.Unmap()})
				}
			}
		}
	}
	return it
}

// recorded is a copy of m's bytes as received, but for the secrets an
// action's reply may carry (GetConfig's `Line-...: secret=...` when the
// guard plans a rotation, the password of an AuthDetail): the recording
// keeps their keys and says [redacted]. Events Asterisk raises by itself
// carry none and are copied as they are.
func recorded(m *ami.Message) []byte {
	if !m.IsResponse() && !m.Has("ActionID") {
		return append([]byte(nil), m.Raw()...)
	}
	redact := false
	for i := 0; i < m.Len() && !redact; i++ {
		redact = secretHeader(m.Key(i), m.Value(i))
	}
	if !redact {
		return append([]byte(nil), m.Raw()...)
	}
	var b []byte
	for i := 0; i < m.Len(); i++ {
		k, v := m.Key(i), m.Value(i)
		b = append(append(b, k...), ": "...)
		if secretHeader(k, v) {
			if j := bytes.IndexByte(v, '='); j >= 0 && bytes.HasPrefix(k, []byte("Line-")) {
				b = append(b, v[:j+1]...)
			}
			b = append(b, "[redacted]"...)
		} else {
			b = append(b, v...)
		}
		b = append(b, '\r', '\n')
	}
	return append(b, '\r', '\n')
}

// secretNames are the keys under which Asterisk holds a secret: sip.conf's
// secret and md5secret, pjsip.conf's password, md5_cred and
// password_digest, and the fields of a PJSIPShowEndpoint AuthDetail.
var secretNames = []string{"secret", "md5secret", "password", "md5_cred", "password_digest", "md5cred", "passworddigest"}

// secretHeader reports whether a reply header holds a secret: a GetConfig
// line `key=value` whose key is a secret's, or a header so named.
func secretHeader(k, v []byte) bool {
	name := k
	if bytes.HasPrefix(k, []byte("Line-")) {
		j := bytes.IndexByte(v, '=')
		if j < 0 {
			return false
		}
		name = bytes.TrimSpace(v[:j])
	}
	for _, s := range secretNames {
		if bytes.EqualFold(name, []byte(s)) {
			return true
		}
	}
	return false
}
