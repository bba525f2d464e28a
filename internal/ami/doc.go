// Package ami reads the Asterisk Manager Interface wire format and turns the
// few events the guard needs into typed [Event] values.
//
// The pieces, in the order data flows through them:
//
//   - [Reader] splits a byte stream (a socket) into [Message] values. It never
//     buffers more than [ReaderOptions].MaxMessageBytes of one message, reuses
//     the Message's storage and does not allocate per message.
//   - [Transcript] wraps a Reader for the recorded `.ami` fixtures and gives
//     each message its position and time.
//   - [Decode] fills an [Event] from a Message, or reports that the guard does
//     not need it (cheaply, without allocating).
//   - [ParseChannel] and [ValidName] take apart channel names and check names
//     before they go into AMI actions.
//   - [AppendAction] writes an [Action] for the wire, refusing what could
//     break the framing; [Message.Response] copies a reply out of the reader.
//
// Nothing here touches the network: the caller owns the connection. The
// guard's client, which does, is the subpackage client.
package ami
