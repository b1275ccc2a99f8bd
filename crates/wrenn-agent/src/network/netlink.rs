//! A blocking netlink connection: requests sent together, every acknowledgement
//! awaited, dumps collected. Shared by rtnetlink ([`super::link`]) and nfnetlink
//! ([`super::nft`]).
//!
//! The operations the network module performs take microseconds in the kernel, so a
//! plain blocking socket (with a receive timeout) run off the async threads is simpler
//! and faster than an async connection.

use crate::runtime::error_chain;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::Socket;

/// How long a reply may take before the request counts as failed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer: large enough for any single datagram of a dump.
const RECV_BUFFER: usize = 64 * 1024;

/// A request that failed: which one (index in the batch) and why.
#[derive(Debug)]
pub(crate) struct RequestError {
    /// Index of the failing message in what was sent.
    pub index: usize,
    /// The kernel's answer (or the I/O error).
    pub error: io::Error,
}

/// A netlink socket bound to the kernel, with a sequence counter.
#[derive(Debug)]
pub(crate) struct Connection {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Connection {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) in the
    /// calling thread's network namespace; it stays in that namespace for its lifetime.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut socket = Socket::new(protocol)?;
        socket.bind_auto()?;
        // Errors echo only the failing header, not the whole request.
        socket.set_cap_ack(true)?;
        rustix::net::sockopt::set_socket_timeout(
            socket.as_fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(REPLY_TIMEOUT),
        )?;
        Ok(Self {
            socket,
            seq: rand::random::<u32>() >> 1,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// Sends `messages` in one datagram (each with its `flags`, plus `NLM_F_REQUEST`)
    /// and waits for the acknowledgement of every message that asks for one
    /// (`NLM_F_ACK`). Fails with the first error the kernel reports.
    pub fn send_all<I>(&mut self, messages: Vec<(u16, I)>) -> Result<(), RequestError>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        let first = self.seq.wrapping_add(1);
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for (index, (flags, inner)) in messages.into_iter().enumerate() {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = flags | NLM_F_REQUEST;
            header.sequence_number = self.seq;
            if flags & NLM_F_ACK != 0 {
                pending.push(self.seq);
            }
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
            message.finalize();
            let start = out.len();
            out.resize(start + message.buffer_len(), 0);
            message.serialize(&mut out[start..]);
            // Messages are 4-byte aligned; `buffer_len` already is.
            debug_assert_eq!(out.len() % 4, 0, "netlink message length {index}");
        }
        let index_of = |seq: u32| seq.wrapping_sub(first) as usize;
        self.socket
            .send(&out, 0)
            .map_err(|error| RequestError { index: 0, error })?;
        while !pending.is_empty() {
            let replies = self.receive::<I>().map_err(|error| RequestError {
                index: index_of(pending[0]),
                error,
            })?;
            for reply in replies {
                let seq = reply.header.sequence_number;
                // A late answer to a request abandoned after an earlier failure.
                if !pending.contains(&seq) {
                    continue;
                }
                if let NetlinkPayload::Error(e) = reply.payload {
                    if e.code.is_some() {
                        return Err(RequestError {
                            index: index_of(seq),
                            error: e.to_io(),
                        });
                    }
                    pending.retain(|s| *s != seq);
                }
            }
        }
        Ok(())
    }

    /// Sends one request that is answered with one message (a `GET` of one object) and
    /// returns that message.
    pub fn get<I>(&mut self, request: I) -> io::Result<I>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            for reply in self.receive::<I>()? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => return Ok(inner),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    /// Sends one dump request and collects every message of the answer.
    pub fn dump<I>(&mut self, request: I) -> io::Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut found = Vec::new();
        loop {
            for reply in self.receive::<I>()? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => found.push(inner),
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
        }
    }

    /// Receives one datagram and parses the messages in it.
    fn receive<I: NetlinkDeserializable>(&mut self) -> io::Result<Vec<NetlinkMessage<I>>> {
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], 0)?
            .min(self.buf.len());
        let mut messages = Vec::new();
        let mut rest = &self.buf[..n];
        while !rest.is_empty() {
            let length = NetlinkBuffer::new_checked(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, error_chain(&e)))?
                .length() as usize;
            let message = NetlinkMessage::<I>::deserialize(&rest[..length])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, error_chain(&e)))?;
            messages.push(message);
            let aligned = length.next_multiple_of(4).min(rest.len());
            rest = &rest[aligned..];
        }
        Ok(messages)
    }
}
