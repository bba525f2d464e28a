package detector

import (
	"slices"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// Calls: which channel is a call of which extension, and the call rules
// (call_rate, concurrent, prefix_guess, international, failed_probes per
// extension); and the state rebuilt from Asterisk after a (re)connect.

// IsCall reports whether a Newchannel is a call its channel's endpoint
// originated, as opposed to a leg Asterisk created toward someone (the
// outbound leg of a Dial, a Local channel's second half). Only those are
// counted for the extension in the channel name.
func IsCall(ev *ami.Event) bool {
	return isCall(ev.Channel, ev.Uniqueid, ev.Linkedid, ev.Exten)
}

// isCall decides from a channel's name, ids and dialplan extension:
//
//   - Asterisk 12 and later: the call's first channel gives the call its
//     Linkedid, so a channel whose Uniqueid equals its Linkedid started
//     the call; every leg made for it carries the Linkedid of that first
//     channel.
//   - Asterisk 1.8 and 11 send no Linkedid at all. There a channel that a
//     phone or a trunk brought in is created with the extension it asked
//     for (the dialled number, `s` when none), while a channel Asterisk
//     requests for a Dial or an Originate is created with an empty Exten
//     (observed on 11: the caller's leg has Exten = the number, the carrier
//     leg an empty Exten, and it is named as Dial's Destination right
//     after). So a channel with an Exten is a call of its endpoint: an
//     extension's outgoing calls and a trunk's incoming ones alike; the leg
//     that rings the carrier, or rings an extension, is not. Local channels
//     are left out: both halves carry the Local extension whether a phone
//     dialled them (a ring group, a queue member, follow-me) or the PBX
//     originated them, so without Linkedid a leg cannot be told from a
//     call, and counting them would count every ring-group call for each
//     member.
func isCall(channel, uniqueid, linkedid, exten string) bool {
	switch {
	case uniqueid == "":
		return false
	case linkedid != "":
		return uniqueid == linkedid
	}
	return exten != "" && !strings.HasPrefix(channel, "Local/")
}

func (d *Detector) newChannel(ev *ami.Event) {
	if !IsCall(ev) {
		return // a leg created toward someone, not a call this channel originated
	}
	cn, ok := ami.ParseChannel(ev.Channel)
	if !ok {
		return
	}
	k := ami.Extension{Tech: cn.Tech, Name: cn.Name}
	if d.extAllowed(k) {
		return
	}
	number := ""
	if IsDialled(ev.Exten) {
		number = ev.Exten
		if d.plan.allowed(number) {
			return
		}
	}
	e := d.ext(k)
	if e == nil {
		return
	}
	if len(e.calls) < maxCallsPerExt {
		uid := strings.Clone(ev.Uniqueid)
		e.calls = append(e.calls, liveCall{uniqueid: uid, channel: strings.Clone(ev.Channel), number: number})
		if len(d.calls) < maxCallIndex {
			d.calls[uid] = e
			d.callsPeak = max(d.callsPeak, len(d.calls))
		}
	}
	cfg := &d.cfg
	d.activity(e).burst.add(d.now, ringSize(cfg.CallRateBurst))
	d.activity(e).rate.add(d.now, ringSize(cfg.CallRate))
	if number != "" {
		d.activity(e).numbers.add(number)
	}
	d.checkExt(e, RuleCallRate, cfg.CallRateBurst, d.activity(e).burst.since(d.now-int64(cfg.CallRateBurst.Window)), "calls started")
	d.checkExt(e, RuleCallRate, cfg.CallRate, d.activity(e).rate.since(d.now-int64(cfg.CallRate.Window)), "calls started")
	d.checkExt(e, RuleConcurrent, cfg.Concurrent, len(e.calls), "live calls")
	if number != "" {
		d.dialled(e, number)
	}
}

// dialled runs the number rules for one call of e.
func (d *Detector) dialled(e *extState, number string) {
	cfg := &d.cfg
	if intl, risky, _ := d.plan.international(number); intl {
		d.activity(e).intl.add(d.now, ringSize(cfg.International))
		d.checkExt(e, RuleInternational, cfg.International, d.activity(e).intl.since(d.now-int64(cfg.International.Window)), "international calls")
		if risky {
			d.activity(e).highRisk.add(d.now, ringSize(cfg.HighRisk))
			d.checkExt(e, RuleInternational, cfg.HighRisk, d.activity(e).highRisk.since(d.now-int64(cfg.HighRisk.Window)), "calls to high-risk countries")
		}
	}
	if prefix, dest, ok := d.plan.split(number); ok && cfg.PrefixGuess.Window > 0 {
		n := d.activity(e).notePrefix(prefix, dest, d.now, int64(cfg.PrefixGuess.Window), ringSize(cfg.PrefixGuess))
		d.checkExt(e, RulePrefixGuess, cfg.PrefixGuess, n, "distinct prefixes for one destination")
	}
}

func (d *Detector) dialBegin(ev *ami.Event) {
	// Only a call whose number was not known at Newchannel (Originate, call
	// files, Local channels; a trunk's call answered by `s` that dials out
	// again) learns it here, from the linked call. Asterisk 1.8/11 send no
	// Linkedid: there only a channel that is itself the call can name it.
	call := ev.Linkedid
	if call == "" {
		call = ev.Uniqueid
	}
	e := d.calls[call]
	if e == nil {
		return
	}
	for i := range e.calls {
		c := &e.calls[i]
		if c.uniqueid != call {
			continue
		}
		if c.number != "" {
			return
		}
		num := dialNumber(ev)
		if num == "" || d.plan.allowed(num) {
			return
		}
		c.number = strings.Clone(num)
		d.activity(e).numbers.add(num)
		d.dialled(e, c.number)
		return
	}
}

// dialNumber finds the dialled number in a DialBegin: the outbound leg's
// Exten, else the last part of the dial string (SIP/carrier/0044..., carrier/0044...,
// PJSIP/0044...@carrier).
func dialNumber(ev *ami.Event) string {
	if IsDialled(ev.DestExten) {
		return ev.DestExten
	}
	s := ev.DialString
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if IsDialled(s) {
		return s
	}
	return ""
}

func (d *Detector) hangup(ev *ami.Event) {
	// A 1.8/11 Hangup has neither Linkedid nor Exten: whether the channel
	// was a call was decided at its Newchannel, and only a tracked call
	// counts when it ends.
	legacy := ev.Linkedid == ""
	if ev.Uniqueid == "" || !legacy && ev.Uniqueid != ev.Linkedid {
		return
	}
	e := d.calls[ev.Uniqueid]
	if e != nil {
		delete(d.calls, ev.Uniqueid)
	} else if cn, ok := ami.ParseChannel(ev.Channel); ok {
		e = d.exts[ami.Extension{Tech: cn.Tech, Name: cn.Name}] // a call the index had no room for
	}
	if e == nil {
		return
	}
	tracked := false
	for i := range e.calls {
		if e.calls[i].uniqueid == ev.Uniqueid {
			e.calls = slices.Delete(e.calls, i, i+1)
			tracked = true
			break
		}
	}
	if legacy && !tracked {
		return
	}
	switch ev.Cause {
	case 1, 3, 28: // unallocated number, no route to destination, invalid number format
		e.lastSeen = d.now
		d.activity(e).probes.add(d.now, ringSize(d.cfg.FailedProbes))
		d.checkExt(e, RuleFailedProbes, d.cfg.FailedProbes, d.activity(e).probes.since(d.now-int64(d.cfg.FailedProbes.Window)), "unroutable calls")
	}
}

// LiveChannel is a channel Asterisk lists as up (CoreShowChannels). On
// Asterisk 1.8 and 11 Linkedid is empty.
type LiveChannel struct {
	Channel, Uniqueid, Linkedid, Exten string
}

// LiveChannelFrom reads a CoreShowChannel list item of any Asterisk
// version. get returns the value of a header, "" when absent, with the key's
// case ignored (Asterisk 11 spells UniqueID). Asterisk 12 and later send
// Channel, Uniqueid, Linkedid and Exten; 1.8 and 11 send Channel, UniqueID
// and Extension, and no Linkedid.
func LiveChannelFrom(get func(key string) string) LiveChannel {
	c := LiveChannel{Channel: get("Channel"), Uniqueid: get("Uniqueid"), Linkedid: get("Linkedid"), Exten: get("Exten")}
	if c.Exten == "" {
		c.Exten = get("Extension")
	}
	return c
}

// Resync replaces the tracked live calls with what Asterisk says is up, after
// a (re)connect in which events may have been lost: calls whose Hangup was
// missed are dropped, and calls that started unseen are added and run
// through the concurrent and number rules, so an attack that began while the
// guard was blind is still caught. Call rates are not fed: the start times of
// unseen calls are not known well enough.
func (d *Detector) Resync(now time.Time, live []LiveChannel, out []Alert) []Alert {
	if t := now.UnixNano(); t > d.now {
		d.now = t
	}
	ev := &ami.Event{Time: now}
	d.ev, d.out = ev, out
	up := make(map[string]bool, len(live))
	for _, c := range live {
		up[c.Uniqueid] = true
	}
	for _, e := range d.exts {
		e.calls = slices.DeleteFunc(e.calls, func(c liveCall) bool {
			if up[c.uniqueid] {
				return false
			}
			if d.calls[c.uniqueid] == e {
				delete(d.calls, c.uniqueid)
			}
			return true
		})
	}
	for _, c := range live {
		if !isCall(c.Channel, c.Uniqueid, c.Linkedid, c.Exten) || d.calls[c.Uniqueid] != nil {
			continue
		}
		cn, ok := ami.ParseChannel(c.Channel)
		if !ok {
			continue
		}
		k := ami.Extension{Tech: cn.Tech, Name: cn.Name}
		if d.extAllowed(k) {
			continue
		}
		number := ""
		if IsDialled(c.Exten) && !d.plan.allowed(c.Exten) {
			number = c.Exten
		}
		e := d.ext(k)
		if e == nil || len(e.calls) >= maxCallsPerExt {
			continue
		}
		uid := strings.Clone(c.Uniqueid)
		e.calls = append(e.calls, liveCall{uniqueid: uid, channel: strings.Clone(c.Channel), number: number})
		if len(d.calls) < maxCallIndex {
			d.calls[uid] = e
			d.callsPeak = max(d.callsPeak, len(d.calls))
		}
		if number != "" {
			d.activity(e).numbers.add(number)
			d.dialled(e, number)
		}
	}
	for _, e := range d.exts {
		if len(e.calls) > 0 {
			d.checkExt(e, RuleConcurrent, d.cfg.Concurrent, len(e.calls), "live calls")
		}
	}
	out = d.out
	d.ev, d.out = nil, nil
	return out
}
