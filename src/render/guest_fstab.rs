//! The one change `fireclaw image fetch` makes to a guest's root tree: Ubuntu's `/etc/fstab`
//! mounts `LABEL=UEFI` on `/boot/efi`, a Firecracker VM has no EFI partition, and systemd
//! stops in emergency mode when a mount without `nofail` fails, so that line is commented
//! out. Every other byte stays as it was.

/// The note put above a line this module comments out.
pub const DISABLED_NOTE: &str = "# fireclaw: a Firecracker VM has no EFI partition\n";

/// `fstab` with every active `/boot/efi` mount commented out, unless it already has `nofail`;
/// `None` when nothing needed changing.
pub fn without_efi_mount(fstab: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(fstab.len() + 64);
    for line in fstab.split_inclusive('\n') {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let active = fields.first().is_some_and(|f| !f.starts_with('#'));
        let efi = fields.get(1) == Some(&"/boot/efi");
        let nofail = fields
            .get(3)
            .is_some_and(|options| options.split(',').any(|o| o == "nofail"));
        if active && efi && !nofail {
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
    fn the_efi_line_is_commented_out_and_the_rest_kept_byte_for_byte() {
        let out = without_efi_mount(UBUNTU).unwrap();
        let (kept, _) = UBUNTU.split_at(UBUNTU.find("LABEL=UEFI").unwrap());
        assert!(out.starts_with(kept));
        assert!(out.ends_with(&format!(
            "{DISABLED_NOTE}#LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n"
        )));
        assert_eq!(
            without_efi_mount(&out),
            None,
            "applying it twice changes nothing"
        );
    }

    #[test]
    fn nofail_comments_and_other_mounts_are_left_alone() {
        for fstab in [
            "LABEL=UEFI /boot/efi vfat umask=0077,nofail 0 1\n",
            "# LABEL=UEFI /boot/efi vfat umask=0077 0 1\n",
            "LABEL=cloudimg-rootfs / ext4 defaults 0 1",
            "",
        ] {
            assert_eq!(without_efi_mount(fstab), None, "{fstab}");
        }
        assert_eq!(
            without_efi_mount("LABEL=UEFI /boot/efi vfat umask=0077 0 1").unwrap(),
            format!("{DISABLED_NOTE}#LABEL=UEFI /boot/efi vfat umask=0077 0 1")
        );
    }
}
