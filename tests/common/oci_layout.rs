//! A tiny container image written by the test itself as an OCI image layout directory
//! (`oci-layout`, `index.json`, `blobs/sha256/…`): a one-file layer as tar.gz, its config
//! and manifest. The bytes are deterministic for a given seed, so digests are stable.

use std::path::Path;

use kiln::oci::digest::Digest;
use tempfile::TempDir;

/// The OCI image manifest media type.
pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image config media type.
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The gzip-compressed OCI layer media type.
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An image in an OCI layout directory, with every byte and digest at hand.
pub struct TestImage {
    /// The layout directory (removed on drop).
    pub dir: TempDir,
    /// The tag it carries in `index.json`.
    pub tag: String,
    /// The uncompressed layer tar.
    pub layer_tar: Vec<u8>,
    /// The layer as stored: tar.gz.
    pub layer: Vec<u8>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// Builds a linux/amd64 image whose one file holds `seed` (different seeds, different
    /// digests), tagged `tag`.
    pub fn build(seed: &str, tag: &str) -> Self {
        Self::build_for(seed, tag, "linux/amd64")
    }

    /// [`TestImage::build`] for `platform` (`os/arch[/variant]`): its config names that
    /// os, architecture and variant, which is what a platform-selecting pull matches.
    /// `linux/amd64` gives the same bytes as [`TestImage::build`].
    pub fn build_for(seed: &str, tag: &str, platform: &str) -> Self {
        let mut parts = platform.split('/');
        let (Some(os), Some(architecture)) = (parts.next(), parts.next()) else {
            panic!("platform {platform:?} is not os/arch[/variant]");
        };
        let variant = parts.next();
        let content = format!("kiln test image {seed}\n");
        let layer_tar = tar(&[("hello.txt", content.as_bytes())]);
        let layer = gzip(&layer_tar);
        let mut config = serde_json::json!({
            "architecture": architecture,
            "os": os,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer_tar).to_string()]}
        });
        if let Some(variant) = variant {
            config["variant"] = variant.into();
        }
        let config = serde_json::to_vec(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, &config),
            "layers": [descriptor(LAYER_TYPE, &layer)]
        }))
        .unwrap();
        let dir = tempfile::tempdir().expect("temp dir for an OCI layout");
        let image = Self {
            dir,
            tag: tag.to_owned(),
            layer_tar,
            layer,
            config,
            manifest,
        };
        image.write_layout();
        image
    }

    /// The skopeo/containers-image reference of the layout: `oci:<dir>:<tag>`.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.dir.path().display(), self.tag)
    }

    /// The manifest's digest.
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest)
    }

    /// The config's digest.
    pub fn config_digest(&self) -> Digest {
        Digest::of(&self.config)
    }

    /// The layer's digest (of its tar.gz bytes).
    pub fn layer_digest(&self) -> Digest {
        Digest::of(&self.layer)
    }

    fn write_layout(&self) {
        let root = self.dir.path();
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for bytes in [&self.layer, &self.config, &self.manifest] {
            std::fs::write(blobs.join(Digest::of(bytes).hex()), bytes).unwrap();
        }
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let mut entry = descriptor(MANIFEST_TYPE, &self.manifest);
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": self.tag});
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry]
        });
        std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

impl TestImage {
    /// Asserts that the layout at `layout` holds this image's manifest, config and layer,
    /// byte for byte (what a pull wrote there).
    pub fn assert_pulled_into(&self, layout: &Path) {
        for (digest, bytes) in [
            (self.manifest_digest(), &self.manifest),
            (self.config_digest(), &self.config),
            (self.layer_digest(), &self.layer),
        ] {
            assert_eq!(&read_blob(layout, &digest), bytes, "{digest}");
        }
    }
}

/// Reads blob `digest` from an OCI layout directory.
pub fn read_blob(layout: &Path, digest: &Digest) -> Vec<u8> {
    std::fs::read(layout.join("blobs").join("sha256").join(digest.hex()))
        .unwrap_or_else(|err| panic!("blob {digest} in {}: {err}", layout.display()))
}

/// An OCI descriptor of `bytes`.
pub fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len()
    })
}

/// A ustar archive of regular files (mode 0644, owner 0, mtime 0), ending in the two zero
/// blocks.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let files: Vec<(&str, &[u8], u32)> = files.iter().map(|(n, d)| (*n, *d, 0o644)).collect();
    tar_with_modes(&files)
}

/// [`tar`] with a mode per file (e.g. 0o755 for a program).
pub fn tar_with_modes(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, mode) in files {
        assert!(name.len() < 100, "tar names here are short");
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], value: u64| {
            let text = format!("{value:0width$o}\0", width = field.len() - 1);
            field.copy_from_slice(text.as_bytes());
        };
        octal(&mut header[100..108], u64::from(*mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Gzip (RFC 1952) with stored (uncompressed) deflate blocks: a valid `.gz` that any
/// gunzip reads, without a compression library.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE, reflected), bit by bit: test layers are small.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
