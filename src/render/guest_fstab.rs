//! The one change `fireclaw image fetch` makes to a guest's root tree: Ubuntu's `/etc/fstab`
//! mounts partitions of the cloud image's own disk besides the root (`LABEL=BOOT` on `/boot`
//! since 23.10, `LABEL=UEFI` on `/boot/efi`). A Firecracker VM has only the root disk, and
//! systemd stops in emergency mode when a mount without `nofail` fails, so every active line
//! that mounts a disk partition anywhere but `/` is commented out. Every other byte stays.

/// The note put above a line this module comments out.
pub const DISABLED_NOTE: &str =
    "# fireclaw: a Firecracker VM has only its root disk; this partition is not there\n";

/// Devices named like this are partitions of a disk (the root disk is the only one a VM has);
/// anything else (`tmpfs`, `proc`, a swap file's path, a network share) is left alone.
fn is_partition(device: &str) -> bool {
    ["LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=", "/dev/"]
        .iter()
        .any(|prefix| device.starts_with(prefix))
}

/// `fstab` with every active mount of a partition other than the root commented out, unless it
/// already has `nofail`; `None` when nothing needed changing.
pub fn without_missing_partitions(fstab: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(fstab.len() + 128);
    for line in fstab.split_inclusive('\n') {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let device = fields.first().copied().unwrap_or("#");
        let active = !device.starts_with('#');
        let elsewhere = fields.get(1).is_some_and(|point| *point != "/");
        let nofail = fields
            .get(3)
            .is_some_and(|options| options.split(',').any(|o| o == "nofail"));
        if active && elsewhere && is_partition(device) && !nofail {
            out.push_str(DISABLED_NOTE);
            out.push('#');
            changed = true;
        }
        out.push_str(line);
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UBUNTU: &str = "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,commit=30,errors=remount-ro\t0 1\n\
LABEL=BOOT\t/boot\text4\tdefaults\t0 2\n\
LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n";

    #[test]
    fn the_boot_and_efi_lines_are_commented_out_and_the_root_kept_byte_for_byte() {
        let out = without_missing_partitions(UBUNTU).unwrap();
        assert_eq!(
            out,
            format!(
                "LABEL=cloudimg-rootfs\t/\t ext4\tdiscard,commit=30,errors=remount-ro\t0 1\n\
                 {DISABLED_NOTE}#LABEL=BOOT\t/boot\text4\tdefaults\t0 2\n\
                 {DISABLED_NOTE}#LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n"
            )
        );
        assert_eq!(
            without_missing_partitions(&out),
            None,
            "applying it twice changes nothing"
        );
    }

    #[test]
    fn nofail_comments_the_root_and_mounts_of_no_partition_are_left_alone() {
        for fstab in [
            "LABEL=UEFI /boot/efi vfat umask=0077,nofail 0 1\n",
            "# LABEL=UEFI /boot/efi vfat umask=0077 0 1\n",
            "LABEL=cloudimg-rootfs / ext4 defaults 0 1",
            "tmpfs /tmp tmpfs defaults 0 0\n/swap.img none swap sw 0 0\n",
            "",
        ] {
            assert_eq!(without_missing_partitions(fstab), None, "{fstab}");
        }
        assert_eq!(
            without_missing_partitions("UUID=1234-ABCD /boot/efi vfat umask=0077 0 1").unwrap(),
            format!("{DISABLED_NOTE}#UUID=1234-ABCD /boot/efi vfat umask=0077 0 1")
        );
    }
}
