//! A small synchronous rtnetlink client for exactly what fireclaw does to host links: look a
//! link up by name, create a bridge, add an IPv4 address, bring a link up, attach a port to a
//! bridge, set and read back the bridge port flag `isolated`, and delete a link. Messages are
//! encoded by hand (a header, `ifinfomsg`/`ifaddrmsg`, and attributes), which keeps every flag
//! explicit: `isolated` is set with RTM_NEWLINK *without* NLM_F_CREATE, carrying
//! IFLA_INFO_SLAVE_DATA, which the kernel applies (an RTM_SETLINK carrying it is acknowledged
//! and ignored).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_ROUTE: libc::c_int = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFLA_TUN_TYPE: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFF_UP: u32 = 0x1;
/// `IFF_TAP` as reported in IFLA_TUN_TYPE.
const TUN_TYPE_TAP: u8 = 2;

const HEADER_LEN: usize = 16;
const IFINFO_LEN: usize = 16;
const IFADDR_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open a netlink socket")]
    Open(#[source] io::Error),
    #[error("{operation}")]
    Request {
        operation: String,
        source: io::Error,
    },
    #[error("{operation}: malformed netlink reply")]
    Malformed { operation: String },
}

/// What fireclaw needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    /// `IFLA_INFO_KIND`: "bridge", "tun", "veth", "dummy", ... (none for plain devices).
    pub kind: Option<String>,
    /// For "tun" devices, whether it is a tap (as opposed to a tun).
    pub is_tap: bool,
    pub master: Option<u32>,
    /// For a bridge port, its `isolated` flag.
    pub isolated: Option<bool>,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// Attribute encoding.
struct Message {
    bytes: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16) -> Self {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[4..6].copy_from_slice(&kind.to_ne_bytes());
        bytes[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self {
            bytes,
            nests: Vec::new(),
        }
    }

    fn ifinfo(mut self, index: u32, flags: u32, change: u32) -> Self {
        let mut body = [0u8; IFINFO_LEN];
        body[0] = libc::AF_UNSPEC as u8;
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        body[12..16].copy_from_slice(&change.to_ne_bytes());
        self.bytes.extend_from_slice(&body);
        self
    }

    fn ifaddr(mut self, prefix: u8, index: u32) -> Self {
        let mut body = [0u8; IFADDR_LEN];
        body[0] = libc::AF_INET as u8;
        body[1] = prefix;
        body[4..8].copy_from_slice(&index.to_ne_bytes());
        self.bytes.extend_from_slice(&body);
        self
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Self {
        let length = (4 + payload.len()) as u16;
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
        self
    }

    fn string(self, kind: u16, value: &str) -> Self {
        let mut payload = value.as_bytes().to_vec();
        payload.push(0);
        self.attr(kind, &payload)
    }

    fn begin(mut self, kind: u16) -> Self {
        self.nests.push(self.bytes.len());
        self.bytes.extend_from_slice(&[0, 0]);
        self.bytes
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(mut self) -> Self {
        if let Some(start) = self.nests.pop() {
            let length = (self.bytes.len() - start) as u16;
            self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        }
        self
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self, sequence: u32) -> Vec<u8> {
        let length = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
        self.bytes
    }
}

/// Attribute decoding: (type without flags, payload).
fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while data.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > data.len() {
            break;
        }
        found.push((kind, &data[4..length]));
        let advance = length.next_multiple_of(4).min(data.len());
        data = &data[advance..];
    }
    found
}

fn find(attributes: &[(u16, &[u8])], kind: u16) -> Option<Vec<u8>> {
    attributes
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.to_vec())
}

fn c_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

fn u32_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// Parses the body of an RTM_NEWLINK message.
fn parse_link(body: &[u8]) -> Option<Link> {
    if body.len() < IFINFO_LEN {
        return None;
    }
    let index = u32::from_ne_bytes(body[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(body[8..12].try_into().ok()?);
    let attrs = attributes(&body[IFINFO_LEN..]);
    let name = c_string(&find(&attrs, IFLA_IFNAME)?);
    let master = find(&attrs, IFLA_MASTER)
        .and_then(|p| u32_of(&p))
        .filter(|m| *m != 0);
    let mut link = Link {
        index,
        name,
        up: flags & IFF_UP != 0,
        kind: None,
        is_tap: false,
        master,
        isolated: None,
    };
    if let Some(info) = find(&attrs, IFLA_LINKINFO) {
        let info = attributes(&info);
        link.kind = find(&info, IFLA_INFO_KIND).map(|p| c_string(&p));
        if link.kind.as_deref() == Some("tun")
            && let Some(data) = find(&info, IFLA_INFO_DATA)
        {
            link.is_tap = find(&attributes(&data), IFLA_TUN_TYPE).and_then(|p| p.first().copied())
                == Some(TUN_TYPE_TAP);
        }
        if let Some(slave) = find(&info, IFLA_INFO_SLAVE_DATA) {
            link.isolated = find(&attributes(&slave), IFLA_BRPORT_ISOLATED)
                .and_then(|p| p.first().copied())
                .map(|v| v != 0);
        }
    }
    Some(link)
}

pub struct Netlink {
    socket: OwnedFd,
    sequence: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            socket,
            sequence: 1,
        })
    }

    fn send(&mut self, message: Message) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let bytes = message.finish(self.sequence);
        // SAFETY: sockaddr_nl is plain data; zeroed means "the kernel".
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bytes and address are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.sequence)
    }

    /// Reads replies to `sequence` until an ACK/error (for requests) or DONE (for dumps),
    /// collecting the bodies of messages of type `wanted`.
    fn receive(&mut self, sequence: u32, wanted: u16) -> io::Result<Vec<Vec<u8>>> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut bodies = Vec::new();
        loop {
            // SAFETY: buffer is valid for writes of its length.
            let received = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            let mut data = &buffer[..received as usize];
            while data.len() >= HEADER_LEN {
                let length = u32::from_ne_bytes(data[0..4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
                if length < HEADER_LEN || length > data.len() {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                let body = &data[HEADER_LEN..length];
                data = &data[length.next_multiple_of(4).min(data.len())..];
                if seq != sequence {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(bodies),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(
                            body.get(..4)
                                .and_then(|b| b.try_into().ok())
                                .unwrap_or_default(),
                        );
                        return if code == 0 {
                            Ok(bodies)
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    k if k == wanted => bodies.push(body.to_vec()),
                    _ => {}
                }
            }
        }
    }

    fn request(
        &mut self,
        operation: impl Fn() -> String,
        message: Message,
    ) -> Result<(), NetlinkError> {
        let sequence = self.send(message).map_err(|source| NetlinkError::Request {
            operation: operation(),
            source,
        })?;
        self.receive(sequence, 0)
            .map(|_| ())
            .map_err(|source| NetlinkError::Request {
                operation: operation(),
                source,
            })
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let operation = || format!("look up link {name}");
        let message = Message::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK)
            .ifinfo(0, 0, 0)
            .string(IFLA_IFNAME, name);
        let fail = |source| NetlinkError::Request {
            operation: operation(),
            source,
        };
        let sequence = self.send(message).map_err(fail)?;
        match self.receive(sequence, RTM_NEWLINK) {
            Ok(bodies) => match bodies.first() {
                Some(body) => parse_link(body).map(Some).ok_or(NetlinkError::Malformed {
                    operation: operation(),
                }),
                None => Ok(None),
            },
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(fail(e)),
        }
    }

    /// Every link, for orphan checks and tests.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let fail = |source| NetlinkError::Request {
            operation: "list links".into(),
            source,
        };
        let message = Message::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP).ifinfo(0, 0, 0);
        let sequence = self.send(message).map_err(fail)?;
        let bodies = self.receive(sequence, RTM_NEWLINK).map_err(fail)?;
        Ok(bodies.iter().filter_map(|b| parse_link(b)).collect())
    }

    pub fn create_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        let message = Message::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .ifinfo(0, 0, 0)
        .string(IFLA_IFNAME, name)
        .begin(IFLA_LINKINFO)
        .string(IFLA_INFO_KIND, "bridge")
        .end();
        self.request(|| format!("create bridge {name}"), message)
    }

    /// IPv4 addresses (address, prefix) on the link with `index`.
    pub fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        let fail = |source| NetlinkError::Request {
            operation: format!("list addresses of link {index}"),
            source,
        };
        let message = Message::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP).ifaddr(0, 0);
        let sequence = self.send(message).map_err(fail)?;
        let bodies = self.receive(sequence, RTM_NEWADDR).map_err(fail)?;
        Ok(bodies
            .iter()
            .filter(|b| b.len() >= IFADDR_LEN && b[0] == libc::AF_INET as u8)
            .filter(|b| u32::from_ne_bytes([b[4], b[5], b[6], b[7]]) == index)
            .filter_map(|b| {
                let attrs = attributes(&b[IFADDR_LEN..]);
                let local = find(&attrs, IFA_LOCAL).or_else(|| find(&attrs, IFA_ADDRESS))?;
                let octets: [u8; 4] = local.get(..4)?.try_into().ok()?;
                Some((Ipv4Addr::from(octets), b[1]))
            })
            .collect())
    }

    pub fn add_ipv4_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let message = Message::new(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .ifaddr(prefix, index)
        .attr(IFA_LOCAL, &address.octets())
        .attr(IFA_ADDRESS, &address.octets());
        self.request(|| format!("add address {address}/{prefix}"), message)
    }

    pub fn set_up(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let message =
            Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).ifinfo(link.index, IFF_UP, IFF_UP);
        self.request(|| format!("bring up {}", link.name), message)
    }

    pub fn set_master(&mut self, link: &Link, master: &Link) -> Result<(), NetlinkError> {
        let message = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
            .ifinfo(link.index, 0, 0)
            .attr(IFLA_MASTER, &master.index.to_ne_bytes());
        self.request(
            || format!("attach {} to bridge {}", link.name, master.name),
            message,
        )
    }

    /// Sets the bridge port flag `isolated` of `port`: RTM_NEWLINK without NLM_F_CREATE.
    pub fn set_port_isolated(&mut self, port: &Link, isolated: bool) -> Result<(), NetlinkError> {
        let message = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
            .ifinfo(port.index, 0, 0)
            .begin(IFLA_LINKINFO)
            .string(IFLA_INFO_SLAVE_KIND, "bridge")
            .begin(IFLA_INFO_SLAVE_DATA)
            .attr(IFLA_BRPORT_ISOLATED, &[u8::from(isolated)])
            .end()
            .end();
        self.request(
            || {
                format!(
                    "set isolated {} on bridge port {}",
                    if isolated { "on" } else { "off" },
                    port.name
                )
            },
            message,
        )
    }

    pub fn delete_link(&mut self, link: &Link) -> Result<(), NetlinkError> {
        let message = Message::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK).ifinfo(link.index, 0, 0);
        match self.request(|| format!("delete link {}", link.name), message) {
            Err(NetlinkError::Request { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_length_prefixed_padded_and_nested() {
        let bytes = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)
            .ifinfo(7, 0, 0)
            .begin(IFLA_LINKINFO)
            .string(IFLA_INFO_SLAVE_KIND, "bridge")
            .begin(IFLA_INFO_SLAVE_DATA)
            .attr(IFLA_BRPORT_ISOLATED, &[1])
            .end()
            .end()
            .finish(42);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]) & NLM_F_CREATE, 0);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 42);
        assert_eq!(u32::from_ne_bytes(bytes[20..24].try_into().unwrap()), 7);
        let top = attributes(&bytes[HEADER_LEN + IFINFO_LEN..]);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, IFLA_LINKINFO);
        let info = attributes(top[0].1);
        assert_eq!(
            c_string(&find(&info, IFLA_INFO_SLAVE_KIND).unwrap()),
            "bridge"
        );
        let slave = find(&info, IFLA_INFO_SLAVE_DATA).unwrap();
        let data = attributes(&slave);
        assert_eq!(find(&data, IFLA_BRPORT_ISOLATED).unwrap(), [1]);
    }

    #[test]
    fn link_replies_are_parsed_into_kind_master_and_isolation() {
        // A reply as the kernel sends it for a tap that is an isolated bridge port.
        let reply = Message::new(RTM_NEWLINK, 0)
            .ifinfo(9, IFF_UP, 0)
            .string(IFLA_IFNAME, "tmybot2")
            .attr(IFLA_MASTER, &4u32.to_ne_bytes())
            .begin(IFLA_LINKINFO)
            .string(IFLA_INFO_KIND, "tun")
            .begin(IFLA_INFO_DATA)
            .attr(IFLA_TUN_TYPE, &[TUN_TYPE_TAP])
            .end()
            .string(IFLA_INFO_SLAVE_KIND, "bridge")
            .begin(IFLA_INFO_SLAVE_DATA)
            .attr(IFLA_BRPORT_ISOLATED, &[1])
            .end()
            .end()
            .finish(1);
        let link = parse_link(&reply[HEADER_LEN..]).unwrap();
        assert_eq!(
            link,
            Link {
                index: 9,
                name: "tmybot2".into(),
                up: true,
                kind: Some("tun".into()),
                is_tap: true,
                master: Some(4),
                isolated: Some(true),
            }
        );
    }

    #[test]
    fn truncated_attributes_do_not_panic() {
        assert!(attributes(&[8, 0, 1, 0, 1]).is_empty());
        assert!(attributes(&[2, 0, 1, 0]).is_empty());
        assert!(parse_link(&[0; 8]).is_none());
    }
}
