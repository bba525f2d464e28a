// Command asterisklog writes the `messages` log Asterisk 20 would have
// written during an AMI transcript, for measuring log-scanning tools such as
// fail2ban against `guard replay` on the same traffic (docs/bench-replay.sh).
//
//	go run ./cmd/asterisklog [--copies N] TRANSCRIPT > messages
//
// The log has as many lines as the transcript has AMI messages (when enough
// of them are messages Asterisk logs nothing for, as in attack-mixed.ami),
// in Asterisk's file format (`[Nov 25 12:46:55] LEVEL[thread][call] file.c: text`, with
// logger.conf's `messages => security,notice,warning,error,verbose`):
//   - every security event becomes the SECURITY line res_security_log writes
//     (`SecurityEvent="InvalidPassword",EventTV="...",...`, its fields in the
//     event's order);
//   - each failed authentication or refused call also gets the NOTICE line
//     the channel driver writes (chan_sip's `Registration from '...' failed for
//     '...' - Wrong password` and `Call from '...' (...) to extension '...'
//     rejected because extension not found in context '...'.`, PJSIP's
//     `Request 'REGISTER' from '...' failed for '...' (callid: ...) - ...`),
//     in place of the next padding line;
//   - the call events become the VERBOSE lines of the calls (Executing,
//     Called, is ringing, answered, joined and left the bridge, Spawn
//     extension exited, Registered SIP);
//   - every other message (VarSet, Newstate, Cdr, ...: Asterisk logs nothing
//     for them) repeats the last VERBOSE line of its call.
//
// What the AMI events do not carry is reconstructed: the To header of a
// failed REGISTER is written `<sip:ACCOUNT@LOCALADDRESS>`, thread numbers
// are made up, call ids follow the calls' Linkedid.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("asterisklog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	copies := fs.Int("copies", 1, "write the log this many times over")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *copies < 1 {
		fmt.Fprintln(stderr, "usage: asterisklog [--copies N] TRANSCRIPT > messages")
		return 2
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintln(stderr, "asterisklog:", err)
		return 1
	}
	var log bytes.Buffer
	st, err := Convert(bytes.NewReader(data), &log)
	if err != nil {
		fmt.Fprintln(stderr, "asterisklog:", err)
		return 1
	}
	out := bufio.NewWriterSize(stdout, 1<<20)
	for range *copies {
		out.Write(log.Bytes())
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintln(stderr, "asterisklog:", err)
		return 1
	}
	fmt.Fprintf(stderr, "%d messages: %d lines (%d SECURITY, %d NOTICE, %d VERBOSE) written %d times\n",
		st.Messages, st.Lines, st.Security, st.Notice, st.Verbose, *copies)
	return 0
}
