package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/ami"
)

// Stats counts what Convert wrote.
type Stats struct {
	Messages int // messages read after the banner
	Lines    int // lines written
	Security int // SECURITY lines
	Notice   int // NOTICE lines
	Verbose  int // VERBOSE lines, padding included
}

// Made-up thread numbers: chan_sip's and PJSIP's network threads, the
// security logger's, and the first channel thread.
const (
	sipThread      = 1718
	pjsipThread    = 1733
	securityThread = 1705
	firstCall      = 2101
)

// converter holds what a log line needs from earlier messages.
type converter struct {
	w     io.Writer
	st    Stats
	owed  int               // lines written ahead of the messages
	calls map[string]int    // Linkedid -> call number, from 1
	last  map[string]string // Linkedid -> the call's last VERBOSE line, without its date
	prev  string            // the last VERBOSE line of any call
	// authed maps a SIP session (the security events' SessionID) to the
	// peer challenged or authenticated in it; context maps a peer to the
	// dialplan context of its calls.
	authed  map[string]string
	context map[string]string
}

// Convert reads an AMI transcript from r and writes the log Asterisk would
// have written during it to w, one line per message.
func Convert(r io.Reader, w io.Writer) (Stats, error) {
	c := &converter{
		w: w, calls: map[string]int{}, last: map[string]string{},
		prev: "1] asterisk.c: Asterisk Ready.", authed: map[string]string{}, context: map[string]string{},
	}
	tr := ami.NewTranscript(r)
	var m ami.Message
	for {
		_, t, err := tr.Next(&m)
		if errors.Is(err, io.EOF) {
			return c.st, nil
		}
		if err != nil && !errors.Is(err, ami.ErrMalformed) && !errors.Is(err, ami.ErrOversized) {
			return c.st, err
		}
		c.st.Messages++
		if err != nil {
			c.pad(t, "")
			continue
		}
		c.message(&m, t)
	}
}

// line writes one line dated t: "LEVEL[thread][call] file.c: text" after
// the date.
func (c *converter) line(t time.Time, rest string) {
	fmt.Fprintf(c.w, "[%s] %s\n", t.Format("Jan _2 15:04:05"), rest)
	c.st.Lines++
}

// verbose writes a VERBOSE line of the call with Linkedid id, or of
// chan_sip's thread for id "".
func (c *converter) verbose(t time.Time, id, file, text string) {
	rest := fmt.Sprintf("%d] %s: %s", sipThread, file, text)
	if id != "" {
		rest = fmt.Sprintf("%d]%s %s: %s", c.thread(id), c.callID(id), file, text)
	}
	c.last[id], c.prev = rest, rest
	c.line(t, "VERBOSE["+rest)
	c.st.Verbose++
}

// pad stands for a message Asterisk logs nothing for: the last VERBOSE line
// of its call again, unless a message before wrote a line ahead.
func (c *converter) pad(t time.Time, id string) {
	if c.owed > 0 {
		c.owed--
		return
	}
	rest, ok := c.last[id]
	if !ok {
		rest = c.prev
	}
	c.line(t, "VERBOSE["+rest)
	c.st.Verbose++
}

func (c *converter) callNumber(id string) int {
	n, ok := c.calls[id]
	if !ok {
		n = len(c.calls) + 1
		c.calls[id] = n
	}
	return n
}

func (c *converter) thread(id string) int { return firstCall + c.callNumber(id) }

// callID is Asterisk's call identifier of a call, "[C-0000000a]".
func (c *converter) callID(id string) string { return fmt.Sprintf("[C-%08x]", c.callNumber(id)) }

func (c *converter) message(m *ami.Message, t time.Time) {
	name := m.Get("Event")
	if strings.HasPrefix(m.Get("Privilege"), "security") {
		c.security(m, t, name)
		return
	}
	id := m.Get("Linkedid")
	ch := m.Get("Channel")
	switch name {
	case "Newchannel":
		if peer, ok := sipPeer(ch); ok {
			c.context[peer] = m.Get("Context")
		}
	case "Newexten":
		if app := m.Get("Application"); app != "AppDial" && app != "AppDial2" {
			c.verbose(t, id, "pbx.c", fmt.Sprintf("Executing [%s@%s:%s] %s(\"%s\", \"%s\") in new stack",
				m.Get("Exten"), m.Get("Context"), m.Get("Priority"), app, ch, m.Get("AppData")))
			return
		}
	case "DialBegin":
		tech, _, _ := strings.Cut(m.Get("DestChannel"), "/")
		c.verbose(t, id, "app_dial.c", "Called "+tech+"/"+m.Get("DialString"))
		return
	case "DialState":
		if m.Get("DialStatus") == "RINGING" {
			c.verbose(t, id, "app_dial.c", m.Get("DestChannel")+" is ringing")
			return
		}
	case "DialEnd":
		switch m.Get("DialStatus") {
		case "ANSWER":
			c.verbose(t, id, "app_dial.c", m.Get("DestChannel")+" answered "+ch)
			return
		case "BUSY":
			c.verbose(t, id, "app_dial.c", m.Get("DestChannel")+" is busy")
			return
		}
	case "BridgeEnter", "BridgeLeave":
		how := "joined"
		if name == "BridgeLeave" {
			how = "left"
		}
		c.verbose(t, id, "bridge_channel.c", fmt.Sprintf("Channel %s %s '%s' %s-bridge <%s>",
			ch, how, m.Get("BridgeTechnology"), m.Get("BridgeType"), m.Get("BridgeUniqueid")))
		return
	case "Hangup":
		if exten := m.Get("Exten"); exten != "" {
			c.verbose(t, id, "pbx.c", fmt.Sprintf("Spawn extension (%s, %s, %s) exited non-zero on '%s'",
				m.Get("Context"), exten, m.Get("Priority"), ch))
			return
		}
	case "PeerStatus":
		if peer, ok := sipPeer(m.Get("Peer")); ok && m.Get("PeerStatus") == "Registered" {
			c.verbose(t, "", "chan_sip.c", fmt.Sprintf("Registered SIP '%s' at %s", peer, m.Get("Address")))
			return
		}
	}
	c.pad(t, id)
}

// sipPeer returns the peer of a chan_sip channel or peer name: "200" for
// "SIP/200-0000001a" or "SIP/200".
func sipPeer(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "SIP/")
	if !ok {
		return "", false
	}
	if i := strings.LastIndexByte(rest, '-'); i >= 0 {
		rest = rest[:i]
	}
	return rest, rest != ""
}

// security writes res_security_log's line for a security event, and the
// channel driver's NOTICE for a failure.
func (c *converter) security(m *ami.Message, t time.Time, name string) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "SECURITY[%d] res_security_log.c: SecurityEvent=%q", securityThread, name)
	for i := 0; i < m.Len(); i++ {
		k := string(m.Key(i))
		if k == "Event" || k == "Privilege" || k == "TimeReceived" {
			continue
		}
		fmt.Fprintf(&sb, ",%s=\"%s\"", k, m.Value(i))
	}
	c.line(t, sb.String())
	c.st.Security++

	service, account, session := m.Get("Service"), m.Get("AccountID"), m.Get("SessionID")
	remote, local := addrPort(m.Get("RemoteAddress")), addrPort(m.Get("LocalAddress"))
	localHost, _, _ := strings.Cut(local, ":")
	var notice string
	switch {
	case (name == "ChallengeSent" || name == "SuccessfulAuth") && service == "SIP":
		// chan_sip names an INVITE's sender by its From URI: sip:200@pbx.
		user := strings.TrimPrefix(account, "sip:")
		user, _, _ = strings.Cut(user, "@")
		c.authed[session] = user
	case service == "SIP" && name == "FailedACL" && m.Get("ACLName") == "no_extension_match":
		peer, ok := c.authed[session]
		if !ok {
			peer = "unknown"
		}
		ctx, ok := c.context[peer]
		if !ok {
			ctx = "default"
		}
		notice = fmt.Sprintf("NOTICE[%d] chan_sip.c: Call from '%s' (%s) to extension '%s' rejected because extension not found in context '%s'.",
			sipThread, peer, remote, account, ctx)
	case service == "SIP":
		reason := map[string]string{
			"InvalidPassword":         "Wrong password",
			"ChallengeResponseFailed": "Username/auth name mismatch",
			"InvalidAccountID":        "No matching peer found",
			"FailedACL":               "Device does not match ACL",
		}[name]
		if reason != "" {
			notice = fmt.Sprintf("NOTICE[%d] chan_sip.c: Registration from '<sip:%s@%s>' failed for '%s' - %s",
				sipThread, account, localHost, remote, reason)
		}
	case service == "PJSIP":
		reason := map[string]string{
			"InvalidPassword":         "Failed to authenticate",
			"ChallengeResponseFailed": "Failed to authenticate",
			"InvalidAccountID":        "No matching endpoint found",
			"FailedACL":               "Not match Endpoint ACL",
		}[name]
		if reason != "" {
			notice = fmt.Sprintf("NOTICE[%d] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from '<sip:%s@%s>' failed for '%s' (callid: %s) - %s",
				pjsipThread, account, localHost, remote, session, reason)
		}
	}
	if notice != "" {
		c.line(t, notice)
		c.st.Notice++
		c.owed++
	}
}

// addrPort turns a security event address `IPV4/UDP/127.0.0.4/5064` into
// `127.0.0.4:5064` (`[2001:db8::1]:5060` for IPv6).
func addrPort(a string) string {
	parts := strings.Split(a, "/")
	if len(parts) != 4 {
		return a
	}
	if parts[0] == "IPV6" {
		return "[" + parts[2] + "]:" + parts[3]
	}
	return parts[2] + ":" + parts[3]
}
