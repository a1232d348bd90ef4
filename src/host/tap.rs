//! Persistent tap devices. The kernel refuses to create taps over netlink, so they are made the
//! way `ip tuntap add` does: open `/dev/net/tun`, TUNSETIFF with IFF_TAP|IFF_NO_PI, then
//! TUNSETPERSIST so the device outlives our descriptor, which is closed (O_CLOEXEC, dropped
//! here) before Firecracker opens the tap itself. A confined VMM may attach only to a tap whose
//! owner and group are its own (TUNSETOWNER/TUNSETGROUP); attaching as root to a tap nothing
//! holds is also how a wrong owner is repaired. Removal goes through netlink (`delete_link`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `struct ifreq`: a 16-byte name, then a union whose first member we use as flags.
const IFREQ_LEN: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("create tap {name}")]
    Create { name: String, source: io::Error },
    #[error(
        "tap {name} is in use by another process, so its owner cannot be set; stop whatever holds it"
    )]
    Busy { name: String },
    #[error("set the owner of tap {name}")]
    Owner { name: String, source: io::Error },
    #[error("make tap {name} persistent")]
    Persist { name: String, source: io::Error },
    #[error("tap name '{}' is too long for an interface name", crate::instance::values::escaped(.0))]
    NameTooLong(String),
}

/// Removes the tap `name` if there is one; any other kind of link with that name is left alone.
pub fn remove_tap(name: &str) -> Result<(), super::netlink::NetlinkError> {
    let mut netlink = super::netlink::Netlink::open()?;
    if let Some(link) = netlink.link(name)?
        && link.is_tap
    {
        netlink.delete_link(&link)?;
    }
    Ok(())
}

/// The owner and group a tap carries (`None`: anyone with CAP_NET_ADMIN only), from sysfs.
pub fn tap_owner(name: &str) -> io::Result<(Option<u32>, Option<u32>)> {
    let read = |what: &str| -> io::Result<Option<u32>> {
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/{what}"))?;
        // The kernel shows -1 for "not set".
        Ok(text.trim().parse::<u32>().ok())
    };
    Ok((read("owner")?, read("group")?))
}

/// Creates (or attaches to) the tap `name`, makes it persistent and, with `owner`, gives it
/// that uid and gid. An existing tap another process holds cannot be attached to (`Busy`).
pub fn create_persistent_tap(name: &str, owner: Option<(u32, u32)>) -> Result<(), TapError> {
    if name.is_empty() || name.len() > 15 {
        return Err(TapError::NameTooLong(name.to_owned()));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut request = [0u8; IFREQ_LEN];
    request[..name.len()].copy_from_slice(name.as_bytes());
    request[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, for which `request` is large enough
    // and lives across the call.
    let result = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) };
    if result < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EBUSY) {
            return Err(TapError::Busy {
                name: name.to_owned(),
            });
        }
        return Err(TapError::Create {
            name: name.to_owned(),
            source,
        });
    }
    if let Some((uid, gid)) = owner {
        for (request, value) in [(TUNSETOWNER, uid), (TUNSETGROUP, gid)] {
            // SAFETY: TUNSETOWNER and TUNSETGROUP take an integer argument.
            let result =
                unsafe { libc::ioctl(tun.as_raw_fd(), request, libc::c_ulong::from(value)) };
            if result < 0 {
                return Err(TapError::Owner {
                    name: name.to_owned(),
                    source: io::Error::last_os_error(),
                });
            }
        }
    }
    // SAFETY: TUNSETPERSIST takes an integer argument and touches no memory of ours.
    let result = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
    if result < 0 {
        return Err(TapError::Persist {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
