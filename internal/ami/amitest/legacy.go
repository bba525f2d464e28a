package amitest

import (
	"fmt"
	"strconv"
	"strings"
)

// What Asterisk 1.8 and 11 answer differently from 20, as recorded in
// testdata/asterisk-11/actions-dialog.txt. All handlers run with s.mu held.

// listComplete11 ends a list as Asterisk 11 does: the ActionID last.
func (r *reply) listComplete11(event, aid string, n int) *reply {
	return r.h("Event", event).h("EventList", "Complete").h("ListItems", strconv.Itoa(n)).id(aid).end()
}

// unknownCID is how Asterisk 11 prints an empty caller id in an event.
func unknownCID(v string) string {
	if v == "" {
		return "<unknown>"
	}
	return v
}

// emptyCID is how it prints one in a CoreShowChannel (an empty value).
func emptyCID(v string) string {
	if v == "<unknown>" {
		return ""
	}
	return v
}

// actCoreShowChannels11 lists the live channels with 11's fields: UniqueID
// and Extension, lower-case CallerIDnum/CallerIDname, the bridged channel,
// no Linkedid.
func (s *Server) actCoreShowChannels11(q *req) bool {
	r := listStart(q.aid, "Channels will follow")
	chans := s.pbx.live()
	now := s.pbx.now()
	for _, ch := range chans {
		secs := max(int(now.Sub(ch.created).Seconds()), 0)
		prio := ch.snap["Priority"]
		if prio == "" {
			prio = "1"
		}
		var bridged, bridgedID string
		if b := s.pbx.chans[ch.bridgedTo]; b != nil {
			bridged, bridgedID = b.name, b.uniqueid
		}
		r.h("Event", "CoreShowChannel").id(q.aid).h("Channel", ch.name).h("UniqueID", ch.uniqueid).
			h("Context", ch.snap["Context"]).h("Extension", ch.snap["Exten"]).h("Priority", prio).
			h("ChannelState", ch.snap["ChannelState"]).h("ChannelStateDesc", ch.snap["ChannelStateDesc"]).
			h("Application", ch.app).h("ApplicationData", ch.appData).
			h("CallerIDnum", emptyCID(ch.snap["CallerIDNum"])).h("CallerIDname", emptyCID(ch.snap["CallerIDName"])).
			h("ConnectedLineNum", emptyCID(ch.snap["ConnectedLineNum"])).h("ConnectedLineName", emptyCID(ch.snap["ConnectedLineName"])).
			h("Duration", fmt.Sprintf("%02d:%02d:%02d", secs/3600, secs/60%60, secs%60)).
			h("AccountCode", ch.snap["AccountCode"]).h("BridgedChannel", bridged).h("BridgedUniqueID", bridgedID).end()
	}
	r.listComplete11("CoreShowChannelsComplete", q.aid, len(chans))
	q.c.enqueue(r.b, false)
	return true
}

// actSIPpeers11 is SIPpeers as the Asterisk 11 dialog recorded it.
func (s *Server) actSIPpeers11(q *req) bool {
	r := listStart(q.aid, "Peer status list will follow")
	peers := s.sipPeers()
	for _, c := range peers {
		r.h("Event", "PeerEntry").id(q.aid)
		ip, port, _ := s.peerAddress(c)
		if ip == "" {
			ip, port = "-none-", "0"
		}
		for _, f := range peerEntryFields11 {
			k, v := f[0], f[1]
			switch k {
			case "ObjectName":
				v = c.name
			case "IPaddress":
				v = ip
			case "IPport":
				v = port
			case "Dynamic":
				v = "no"
				if strings.EqualFold(c.get("host"), "dynamic") {
					v = "yes"
				}
			case "Description":
				v = c.get("description")
			}
			r.h(k, v)
		}
		r.end()
	}
	r.listComplete11("PeerlistComplete", q.aid, len(peers))
	q.c.enqueue(r.b, false)
	return true
}

// channelReload is the event chan_sip sends when it has reloaded, on 1.8
// and 11 (20 sends Reload instead).
func (s *Server) channelReload(reason string) {
	s.broadcast(new(reply).h("Event", "ChannelReload").h("Privilege", "system,all").h("ChannelType", "SIP").
		h("ReloadReason", reason).h("Registry_Count", "0").h("Peer_Count", strconv.Itoa(len(s.sipPeers()))).end().b,
		classSystem, false)
}

// actCommand11 answers as 1.8 and 11: `Response: Follows`, Privilege,
// ActionID, the CLI's output as raw lines, then `--END COMMAND--`.
func (s *Server) actCommand11(q *req) bool {
	cmd := strings.Join(strings.Fields(q.get("Command")), " ")
	if cmd == "" {
		q.c.enqueue(errorReply(q.aid, "No command provided"), false)
		return true
	}
	r := new(reply).h("Response", "Follows").h("Privilege", "Command").id(q.aid)
	reload := ""
	switch lc := strings.ToLower(cmd); lc {
	case "sip reload":
		reload = "CLIRELOAD (Channel module reload by CLI command)"
	case "reload", "core reload":
		reload = "RELOAD (Channel module reload)"
	default:
		// The CLI's answer to a command it does not know (main/cli.c).
		fields := strings.Fields(cmd)
		r.b = append(r.b, "No such command '"+cmd+"' (type 'core show help "+fields[0]+"' for other possible commands)\n"...)
	}
	r.b = append(r.b, "--END COMMAND--\r\n\r\n"...)
	q.c.enqueue(r.b, false)
	if reload != "" {
		s.pbx.reloadSIP(s.files["sip.conf"])
		s.channelReload(reload)
	}
	return true
}

// hangup11 hangs up channels and broadcasts what Asterisk 11 emitted in the
// dialog's hangup-one: the Bridge Unlink, the other leg's Hangup (cause
// 16), the caller's Dial End, SoftHangupRequest (cause 16) and Hangup with
// the asked cause. For several targets one channel follows the other
// (Asterisk interleaves them). Callers hold s.mu.
func (s *Server) hangup11(targets []*channel, cause int) {
	p := s.pbx
	isTarget := map[string]bool{}
	for _, t := range targets {
		isTarget[t.uniqueid] = true
	}
	var out reply
	for _, t := range targets {
		if p.chans[t.uniqueid] == nil {
			continue // already gone with an earlier one
		}
		var legs []*channel
		for _, ch := range p.live() {
			if ch != t && !isTarget[ch.uniqueid] && ch.linkedid == t.linkedid {
				legs = append(legs, ch)
			}
		}
		if b := p.chans[t.bridgedTo]; b != nil {
			c1, c2 := t, b
			if !t.bridgeFirst {
				c1, c2 = b, t
			}
			out.h("Event", "Bridge").h("Privilege", "call,all").h("Bridgestate", "Unlink").h("Bridgetype", "core").
				h("Channel1", c1.name).h("Channel2", c2.name).h("Uniqueid1", c1.uniqueid).h("Uniqueid2", c2.uniqueid).
				h("CallerID1", c1.snap["CallerIDNum"]).h("CallerID2", c2.snap["CallerIDNum"]).end()
			p.unlink(t)
		}
		answered := false
		for _, l := range legs {
			answered = answered || l.snap["ChannelState"] == "6"
			dialEnd11(&out, l, "ANSWER")
			hangupEvent11(&out, l, 16)
		}
		status := "CANCEL"
		if answered {
			status = "ANSWER"
		}
		dialEnd11(&out, t, status)
		out.h("Event", "SoftHangupRequest").h("Privilege", "call,all").h("Channel", t.name).
			h("Uniqueid", t.uniqueid).h("Cause", "16").end()
		hangupEvent11(&out, t, cause)
		for _, ch := range append([]*channel{t}, legs...) {
			p.unlink(ch)
			delete(p.chans, ch.uniqueid)
			p.kill(ch.uniqueid, "")
		}
		s.logf("amitest: hung up %s (cause %d) and %d other legs", t.name, cause, len(legs))
	}
	s.broadcast(out.b, classCall, false)
}

// dialEnd11 is the Dial End of a channel that dialled.
func dialEnd11(out *reply, ch *channel, status string) {
	if ch.dialled {
		out.h("Event", "Dial").h("Privilege", "call,all").h("SubEvent", "End").h("Channel", ch.name).
			h("UniqueID", ch.uniqueid).h("DialStatus", status).end()
	}
}

// hangupEvent11 is Asterisk 11's Hangup: no Context, Exten or Linkedid.
func hangupEvent11(out *reply, ch *channel, cause int) {
	out.h("Event", "Hangup").h("Privilege", "call,all").h("Channel", ch.name).h("Uniqueid", ch.uniqueid).
		h("CallerIDNum", unknownCID(ch.snap["CallerIDNum"])).h("CallerIDName", unknownCID(ch.snap["CallerIDName"])).
		h("ConnectedLineNum", unknownCID(ch.snap["ConnectedLineNum"])).h("ConnectedLineName", unknownCID(ch.snap["ConnectedLineName"])).
		h("AccountCode", ch.snap["AccountCode"]).h("Cause", strconv.Itoa(cause)).h("Cause-txt", causeTxt(cause)).end()
}
