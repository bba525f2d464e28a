// Package amitest is a scripted fake Asterisk Manager Interface server for
// tests and for `guard demo`.
//
// It listens on 127.0.0.1, greets with an Asterisk 20 banner (or 11 or
// 1.8, see below), streams a recorded `.ami` transcript
// (testdata/transcripts) at the recorded pace or faster, and answers the
// actions the guard uses the way the real Asterisk 20.20.1 / 22.10.1 did in
// the recorded dialogs
// (testdata/asterisk-20/actions-dialog.txt, rotate-dialog.txt,
// login-failure-dialog.txt, testdata/asterisk-22/actions-dialog.txt). It
// keeps a small model of the PBX: live channels (from the streamed
// Newchannel/Hangup and friends), chan_sip peer addresses (PeerStatus),
// PJSIP contacts and source addresses (SuccessfulAuth), and sip.conf /
// pjsip.conf in memory, so that a hangup ends the call (and drops the rest
// of its recorded events) and a rotated secret makes the thief's later
// calls fail as they did in after-rotation.ami.
//
// # Verbatim and synthesized
//
// Taken from the dialogs (same headers, order and texts; values that depend
// on state come from the model): the banner; Login (success with
// FullyBooted and SuccessfulAuth in the same write, the 1 s delayed
// "Authentication failed" and close); Ping; Logoff; CoreShowChannels;
// SIPshowpeer (found: the recorded header list; missing: the message with
// its extra empty line); PJSIPShowContacts; PJSIPShowEndpoint (asterisk-22);
// Getvar CHANNEL(peerip) / CHANNEL(pjsip,remote_addr);
// Hangup by name or uniqueid and by /regex/ (list of ChannelHungup);
// PJSIPHangup (answers before the channel is gone); Hangup of a missing
// channel; GetConfig; UpdateConfig (Success, then the Reload event; missing
// category); Command "sip reload" and "module reload res_pjsip.so"; the
// unknown action answer and its RequestBadFormat event. The events a hangup
// emits follow hangup-events.ami and the dialogs (BridgeLeave,
// SoftHangupRequest with Cause 16, BridgeDestroy, Hangup with the asked
// cause and Cause-txt, TechCause for PJSIP, the other legs with 16). After a
// rotation, InvalidPassword follows after-rotation.ami and
// ChallengeResponseFailed follows pjsip-bruteforce.ami.
//
// Synthesized from Asterisk's source conventions, not recorded: SIPpeers
// (PeerEntry + PeerlistComplete); Getvar CHANNEL(recvip) (the address the
// call's INVITE came from: the last challenge naming a peer with a secret,
// the host of a peer matched by address; it differs from peerip, the
// registration's contact address, as chan_sip's does with nat=no); the
// Events action's reply ("Events: On" / "Events: Off"); Challenge (a
// decimal nonce, as manager.c prints ast_random()) and the MD5 login (the
// Key compared exactly with the lower-case hex md5 of nonce and secret, as
// manager.c's authenticate); the AMI security event of a failed login
// (InvalidPassword, InvalidAccountID, or ChallengeResponseFailed with an
// empty AccountID for a wrong MD5 Key, to the other sessions; none for an
// MD5 login without a challenge);
// "Permission denied" before Login; "Missing action in request"; the error
// texts of UpdateConfig's other failures ("Update did not complete
// successfully" for an Update of a missing variable, as manager.c's
// FAILURE_UPDATE); GetConfig's "No categories found" line (without a colon,
// as Asterisk writes it); "No Contacts found"; the unknown CLI command
// answer (Response: Error, "No such command '...' (type 'core show help
// ...' for other possible commands)"); "Regex compile failed on: ...";
// Cause-txt for causes other than 16 and 21; the saved file's ";!" header
// lines other than "Automatically generated configuration file"; the
// hashes, challenges and session ids of synthesized events (stable per
// input, not real); SorceryMemoryCacheExpireObject (its four answers and
// their extra empty line, from res_sorcery_memory_cache.c);
// PJSIPShowEndpoints (EndpointList events, from pjsip_configuration.c).
//
// # Realtime and FreePBX
//
// With Options.Realtime the PJSIP auths (and chan_sip peers' secrets) are
// read from functions standing for the realtime tables, through a sorcery
// memory cache when one is named: PJSIPShowEndpoint's AuthDetail and the
// model's "is this extension locked out" follow the table, as a realtime
// Asterisk does. With Options.Regenerate a reload of everything first
// writes the config files again (FreePBX's reload writing them from its
// database). User agents are not in the AMI events: the ones the lab
// phones sent are built in (200, 300, 301).
//
// # Asterisk 11 and 1.8
//
// With Options.Version Asterisk11 the server answers as the Asterisk 11.25.3
// of testdata/asterisk-11 (stream testdata/transcripts/asterisk11-*.ami with
// it). Taken from that dialog: the banner (1.3); Login (the reply and a
// FullyBooted with only Status, in one write) and its failure; no security
// event at all (not for logins, not for an unknown action, not after a
// rotation: a rotated peer's calls simply get no channel); CoreShowChannels
// with 11's fields (UniqueID, Extension, CallerIDnum, BridgedChannel,
// BridgedUniqueID, no Linkedid) and the ActionID last in the complete
// event; SIPpeers (recorded there: PeerEntry without Accountcode,
// PeerlistComplete with the ActionID last); SIPshowpeer (no SIP-RTCP-Mux,
// CodecOrder); Getvar; Hangup by name and by /regex/ (ActionID last in
// ChannelsHungupListComplete) and the events a hangup emits (Bridge Unlink,
// the other leg's Hangup with cause 16, the caller's Dial End,
// SoftHangupRequest with cause 16, Hangup with the asked cause, in 11's
// short Hangup format); GetConfig; UpdateConfig with Reload: chan_sip, then
// Event: ChannelReload; Command "sip reload" (Response: Follows, Privilege,
// ActionID, --END COMMAND--, then ChannelReload with the CLIRELOAD reason);
// the unknown action and missing category answers; Logoff. The calls of the
// model are tied together by the Dial Begin (Destination, DestUniqueID) and
// Bridge Link events, since there is no Linkedid. Synthesized: the
// ChannelReload of "reload"/"core reload" and of the Reload action; the
// CLI's "No such command" line (main/cli.c); DialStatus CANCEL for a call
// hung up before its leg answered; the order of the events when a regex
// hangs up several calls (Asterisk interleaves them). PJSIP actions answer
// as unknown and there is no pjsip.conf.
//
// Asterisk1_8 is the same with the AMI 1.1 banner and a Hangup that takes
// no /regex/: 1.8's manager.c looks the value up as a channel name or
// uniqueid, so a regex answers "No such channel". Nothing of it is
// recorded: the rest of 1.8's answers are taken to be 11's (1.8's
// CoreShowChannel has the same fields).
//
// # Event mask
//
// As Asterisk's send_events test, a session gets an event only if its mask
// holds every class of the event's Privilege (less "all"); every event in
// the fixtures has one class, so this is "the mask includes the class".
// Login without Events, "on" or "all" give every class; "off" none.
// Replies to actions are always sent.
package amitest
