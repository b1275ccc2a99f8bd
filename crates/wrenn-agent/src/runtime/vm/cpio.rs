//! The `newc` cpio format the kernel unpacks an initramfs from
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): per entry a 110-byte
//! ASCII header of hex fields, the NUL-terminated name padded to 4 bytes, the data
//! padded to 4 bytes; the archive ends with the entry `TRAILER!!!`.

use std::io::{self, Write};

/// Regular file type bits of `mode`.
const S_IFREG: u32 = 0o100_000;
/// Directory type bits.
const S_IFDIR: u32 = 0o040_000;
/// Symbolic link type bits.
const S_IFLNK: u32 = 0o120_000;

/// Writes a `newc` archive entry by entry; [`finish`](Self::finish) ends it.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> Writer<W> {
    /// An archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    /// A directory `name` (no leading `/`) with permission bits `mode`.
    pub fn dir(&mut self, name: &str, mode: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (mode & 0o7777), 2, &[])
    }

    /// A regular file `name` holding `data`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, data)
    }

    /// A symbolic link `name` pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, 0)?;
        self.name_and_pad("TRAILER!!!")?;
        // The kernel reads the archive in 512-byte blocks: pad like cpio(1) does.
        let pad = (512 - self.written % 512) % 512;
        self.put(&vec![0; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name {name:?} must be relative and non-empty"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name} is larger than 4 GiB"),
            )
        })?;
        let inode = self.next_inode;
        self.next_inode += 1;
        self.header(name, inode, mode, nlink, size)?;
        self.name_and_pad(name)?;
        self.put(data)?;
        self.pad4()
    }

    fn header(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        nlink: u32,
        size: u32,
    ) -> io::Result<()> {
        let name_size = name.len() as u32 + 1;
        let fields = [inode, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())
    }

    fn name_and_pad(&mut self, name: &str) -> io::Result<()> {
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..pad as usize])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Writer;

    #[test]
    fn entries_are_newc_headers_with_padded_names_and_data() {
        let mut w = Writer::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"hi!").unwrap();
        w.symlink("sh", "bin/hello").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 512, 0);
        assert!(out.starts_with(b"070701"));
        // The directory entry: header, "bin\0" (4 bytes), no data.
        let mode = std::str::from_utf8(&out[14..22]).unwrap();
        assert_eq!(u32::from_str_radix(mode, 16).unwrap(), 0o040_755);
        assert_eq!(&out[110..114], b"bin\0");
        // Header and name end at 114: padded to 116. The file's header and name take
        // 120 bytes (aligned), then "hi!" and one byte of padding.
        assert_eq!(&out[114..116], &[0, 0]);
        let file = &out[116..];
        assert!(file.starts_with(b"070701"));
        assert_eq!(&file[110..120], b"bin/hello\0");
        assert_eq!(&file[120..124], b"hi!\0");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("TRAILER!!!"));
        assert!(text.contains("sh\0"));
    }

    #[test]
    fn absolute_or_empty_names_are_refused() {
        let mut w = Writer::new(Vec::new());
        assert!(w.file("/etc/passwd", 0o644, b"").is_err());
        assert!(w.dir("", 0o755).is_err());
    }
}
