# pragma version 0.4.3
# pragma evm-version prague
"""
@title fwledger release registry (ITU-T X.1368 Appendix II)
@license Apache-2.0
@notice
    Lifecycle.
    1. Deployment names the administrators and the approval threshold k (1 of 1 by default).
    2. The administration (k of n administrators approving the same change) registers vendors
       (address + name), hardware classes (id, revision, X25519 public key authors encrypt to)
       and update policies per hardware class and product line: the "contracts written
       beforehand by the administrator" of Appendix II. It can revoke or rotate vendors and
       change its own membership the same way. Any change to the administrator set or the
       threshold cancels every approval still pending.
    3. An active vendor publishes release records (Table II.1). The chain builds the record's
       data section itself (publish time taken from the block), hashes it, chains the header to
       the head of the vendor's product line and enforces strictly increasing versions.
       The full record travels in the `Published` event and in calldata; storage keeps only
       what the chain must enforce or a light node must prove: one word per release holding
       its status flags, its version and whether it is the head of its product line (so a
       single storage proof tells a device everything), plus one word per product line,
       written by its first release, naming the vendor that owns the line.
    4. A release can be revoked, or flagged vulnerable, by its vendor or by the administration.

    Storage words a light node proves (slots from the compiler's storage layout):
      releases[line][header_hash] = version << 8 | HEAD | VULNERABLE | REVOKED | EXISTS
      line_vendor[line]           = keccak256(vendor name) once the line has a release
      vendor_name_hash[address]   = keccak256(vendor name) while the vendor is active
      policies[hw_key][line]      = max << 72 | min << 8 | ALLOWED | SET
    where line = keccak256(abi_encode(vendor_name, product)), hw_key = keccak256(hardware id),
    and versions are packed major << 32 | minor << 16 | patch.
"""

# ---------------------------------------------------------------- types and constants

struct Dependency:
    product: String[64]
    min_version: uint64
    max_version: uint64

FORMAT_VERSION: constant(uint8) = 1
MAX_HARDWARE: constant(uint256) = 8
MAX_DEPENDENCIES: constant(uint256) = 8
MAX_ADMINS: constant(uint256) = 16

EXISTS: constant(uint256) = 1
REVOKED: constant(uint256) = 2
VULNERABLE: constant(uint256) = 4
HEAD: constant(uint256) = 8

POLICY_SET: constant(uint256) = 1
POLICY_ALLOWED: constant(uint256) = 2

# admin action tags, folded into the id of each proposed change
ACT_ADD_ADMIN: constant(uint256) = 1
ACT_REMOVE_ADMIN: constant(uint256) = 2
ACT_SET_THRESHOLD: constant(uint256) = 3
ACT_ADD_VENDOR: constant(uint256) = 4
ACT_REVOKE_VENDOR: constant(uint256) = 5
ACT_ROTATE_VENDOR: constant(uint256) = 6
ACT_ADD_HARDWARE: constant(uint256) = 7
ACT_SET_POLICY: constant(uint256) = 8
ACT_REVOKE_RELEASE: constant(uint256) = 9
ACT_MARK_VULNERABLE: constant(uint256) = 10

# ---------------------------------------------------------------- events (one per change)

# block length = len(data); format version = FORMAT_VERSION (see format_version())
event Published:
    line: indexed(bytes32)
    header_hash: indexed(bytes32)
    prev_hash: bytes32
    data: Bytes[3872]

event Revoked:
    line: indexed(bytes32)
    header_hash: indexed(bytes32)
    by: indexed(address)
    reason: String[256]

event MarkedVulnerable:
    line: indexed(bytes32)
    header_hash: indexed(bytes32)
    by: indexed(address)
    note: String[256]

event VendorAdded:
    vendor: indexed(address)
    name_hash: indexed(bytes32)
    name: String[64]

event VendorRevoked:
    vendor: indexed(address)
    name_hash: indexed(bytes32)

event VendorRotated:
    old: indexed(address)
    new: indexed(address)
    name_hash: indexed(bytes32)

event HardwareAdded:
    hw_key: indexed(bytes32)
    hw_id: String[64]
    revision: uint256
    enc_key: bytes32

event PolicySet:
    hw_key: indexed(bytes32)
    line: indexed(bytes32)
    hw_id: String[64]
    vendor_name: String[64]
    product: String[64]
    allowed: bool
    min_version: uint64
    max_version: uint64

event AdminAdded:
    admin: indexed(address)
    epoch: uint256

event AdminRemoved:
    admin: indexed(address)
    epoch: uint256

event ThresholdChanged:
    threshold: uint256
    epoch: uint256

event Approved:
    op: indexed(bytes32)
    admin: indexed(address)
    approvals: uint256
    threshold: uint256

# ---------------------------------------------------------------- storage

struct HardwareClass:
    registered: bool
    revision: uint256
    enc_key: bytes32

# per release: version << 8 | flags (see header); per line: the owning vendor's name hash
releases: public(HashMap[bytes32, HashMap[bytes32, uint256]])
line_vendor: public(HashMap[bytes32, bytes32])

vendor_name_hash: public(HashMap[address, bytes32])
vendor_address: public(HashMap[bytes32, address])
vendor_revoked: public(HashMap[bytes32, bool])

hardware: public(HashMap[bytes32, HardwareClass])
policies: public(HashMap[bytes32, HashMap[bytes32, uint256]])

admins: public(HashMap[address, bool])
admin_count: public(uint256)
threshold: public(uint256)
admin_epoch: public(uint256)
op_round: HashMap[bytes32, uint256]
approvals: HashMap[bytes32, HashMap[address, bool]]
approval_count: public(HashMap[bytes32, uint256])


@deploy
def __init__(initial_admins: DynArray[address, MAX_ADMINS], initial_threshold: uint256):
    """
    @notice Name the administrators and how many of them must approve a change.
    @param initial_admins distinct non-zero administrator addresses
    @param initial_threshold k, with 1 <= k <= len(initial_admins)
    """
    assert len(initial_admins) > 0, "no administrators"
    for a: address in initial_admins:
        assert a != empty(address), "zero administrator address"
        assert not self.admins[a], "duplicate administrator"
        self.admins[a] = True
        log AdminAdded(admin=a, epoch=0)
    self.admin_count = len(initial_admins)
    assert initial_threshold >= 1 and initial_threshold <= len(initial_admins), "threshold out of range"
    self.threshold = initial_threshold
    log ThresholdChanged(threshold=initial_threshold, epoch=0)


# ---------------------------------------------------------------- k-of-n administration

@internal
def _approve(action: bytes32) -> bool:
    """
    @dev Record the caller's approval of `action`; True once k administrators approved it,
         which consumes the approvals (the same change proposed again starts from zero).
    """
    assert self.admins[msg.sender], "caller is not an administrator"
    op: bytes32 = keccak256(abi_encode(action, self.admin_epoch, self.op_round[action]))
    assert not self.approvals[op][msg.sender], "already approved by this administrator"
    count: uint256 = self.approval_count[op] + 1
    if count < self.threshold:
        self.approvals[op][msg.sender] = True
        self.approval_count[op] = count
        log Approved(op=op, admin=msg.sender, approvals=count, threshold=self.threshold)
        return False
    self.approval_count[op] = 0
    self.op_round[action] += 1
    return True


@view
@external
def pending_approvals(action: bytes32) -> uint256:
    """
    @notice How many administrators approved `action` so far in the current round.
    @param action keccak256 of the action tag and arguments, as the functions below compute it
    """
    op: bytes32 = keccak256(abi_encode(action, self.admin_epoch, self.op_round[action]))
    return self.approval_count[op]


@external
def add_admin(admin: address):
    """
    @notice Add an administrator (k of n). Cancels pending approvals.
    @param admin the new administrator's address
    """
    assert admin != empty(address), "zero administrator address"
    assert not self.admins[admin], "already an administrator"
    assert self.admin_count < MAX_ADMINS, "too many administrators"
    if not self._approve(keccak256(abi_encode(ACT_ADD_ADMIN, admin))):
        return
    self.admins[admin] = True
    self.admin_count += 1
    self.admin_epoch += 1
    log AdminAdded(admin=admin, epoch=self.admin_epoch)


@external
def remove_admin(admin: address):
    """
    @notice Remove an administrator (k of n); k must stay reachable. Cancels pending approvals.
    @param admin the administrator to remove
    """
    assert self.admins[admin], "not an administrator"
    assert self.admin_count - 1 >= self.threshold, "would leave fewer administrators than the threshold"
    if not self._approve(keccak256(abi_encode(ACT_REMOVE_ADMIN, admin))):
        return
    self.admins[admin] = False
    self.admin_count -= 1
    self.admin_epoch += 1
    log AdminRemoved(admin=admin, epoch=self.admin_epoch)


@external
def set_threshold(new_threshold: uint256):
    """
    @notice Change k (k of n). Cancels pending approvals.
    @param new_threshold 1 <= k <= number of administrators
    """
    assert new_threshold >= 1 and new_threshold <= self.admin_count, "threshold out of range"
    if not self._approve(keccak256(abi_encode(ACT_SET_THRESHOLD, new_threshold))):
        return
    self.threshold = new_threshold
    self.admin_epoch += 1
    log ThresholdChanged(threshold=new_threshold, epoch=self.admin_epoch)


# ---------------------------------------------------------------- vendors

@external
def add_vendor(vendor: address, name: String[64]):
    """
    @notice Register a vendor (author) under a unique name (k of n).
    @param vendor the address whose key signs the vendor's transactions and records
    @param name the vendor name records must carry
    """
    assert vendor != empty(address), "zero vendor address"
    assert len(name) > 0, "empty vendor name"
    name_hash: bytes32 = keccak256(name)
    assert self.vendor_name_hash[vendor] == empty(bytes32), "address is already a vendor"
    assert self.vendor_address[name_hash] == empty(address), "vendor name already registered"
    if not self._approve(keccak256(abi_encode(ACT_ADD_VENDOR, vendor, name))):
        return
    self.vendor_name_hash[vendor] = name_hash
    self.vendor_address[name_hash] = vendor
    log VendorAdded(vendor=vendor, name_hash=name_hash, name=name)


@external
def revoke_vendor(vendor: address):
    """
    @notice Revoke a vendor (k of n): it can publish nothing more; its name stays taken.
    @param vendor the vendor's current address
    """
    name_hash: bytes32 = self.vendor_name_hash[vendor]
    assert name_hash != empty(bytes32), "not an active vendor"
    if not self._approve(keccak256(abi_encode(ACT_REVOKE_VENDOR, vendor))):
        return
    self.vendor_name_hash[vendor] = empty(bytes32)
    self.vendor_revoked[name_hash] = True
    log VendorRevoked(vendor=vendor, name_hash=name_hash)


@external
def rotate_vendor(old: address, new: address):
    """
    @notice Move a vendor to a new key (k of n); the old address is refused from then on.
            Product lines are keyed by vendor name, so they continue under the new key.
    @param old the vendor's current address
    @param new the vendor's new address (not a vendor already)
    """
    name_hash: bytes32 = self.vendor_name_hash[old]
    assert name_hash != empty(bytes32), "not an active vendor"
    assert new != empty(address), "zero vendor address"
    assert self.vendor_name_hash[new] == empty(bytes32), "address is already a vendor"
    if not self._approve(keccak256(abi_encode(ACT_ROTATE_VENDOR, old, new))):
        return
    self.vendor_name_hash[old] = empty(bytes32)
    self.vendor_name_hash[new] = name_hash
    self.vendor_address[name_hash] = new
    log VendorRotated(old=old, new=new, name_hash=name_hash)


# ---------------------------------------------------------------- hardware classes, policies

@external
def add_hardware(hw_id: String[64], revision: uint256, enc_key: bytes32):
    """
    @notice Register a hardware class (k of n).
    @param hw_id unique class id, as release records list it
    @param revision the hardware revision number of the class
    @param enc_key the class's X25519 public key, to which authors wrap content keys
    """
    assert len(hw_id) > 0, "empty hardware id"
    assert enc_key != empty(bytes32), "zero encryption key"
    hw_key: bytes32 = keccak256(hw_id)
    assert not self.hardware[hw_key].registered, "hardware class already registered"
    if not self._approve(keccak256(abi_encode(ACT_ADD_HARDWARE, hw_id, revision, enc_key))):
        return
    self.hardware[hw_key] = HardwareClass(registered=True, revision=revision, enc_key=enc_key)
    log HardwareAdded(hw_key=hw_key, hw_id=hw_id, revision=revision, enc_key=enc_key)


@external
def set_policy(hw_id: String[64], vendor_name: String[64], product: String[64], allowed: bool,
               min_version: uint64, max_version: uint64):
    """
    @notice Write the update policy of a hardware class for one product line (k of n):
            whether the class may run it, and the allowed version range (inclusive).
            A class with no policy for a line may run any version its records support.
    @param hw_id a registered hardware class
    @param vendor_name the product line's vendor
    @param product the product line's name
    @param allowed False forbids the line on this class
    @param min_version lowest allowed version (packed)
    @param max_version highest allowed version (packed)
    """
    hw_key: bytes32 = keccak256(hw_id)
    assert self.hardware[hw_key].registered, "unknown hardware class"
    assert len(vendor_name) > 0 and len(product) > 0, "empty product line"
    assert min_version <= max_version, "min version above max version"
    if not self._approve(keccak256(abi_encode(ACT_SET_POLICY, hw_id, vendor_name, product,
                                                allowed, min_version, max_version))):
        return
    line: bytes32 = keccak256(abi_encode(vendor_name, product))
    word: uint256 = POLICY_SET | (convert(min_version, uint256) << 8) | (convert(max_version, uint256) << 72)
    if allowed:
        word = word | POLICY_ALLOWED
    self.policies[hw_key][line] = word
    log PolicySet(hw_key=hw_key, line=line, hw_id=hw_id, vendor_name=vendor_name, product=product,
                  allowed=allowed, min_version=min_version, max_version=max_version)


# ---------------------------------------------------------------- releases

@external
def publish(format_version: uint8, prev_hash: bytes32, merkle_root: bytes32,
            vendor_name: String[64], product: String[64], version: uint64, file_hash: bytes32,
            file_link: String[256], file_name: String[128], file_size: uint256,
            supported_hardware: DynArray[String[64], MAX_HARDWARE],
            dependencies: DynArray[Dependency, MAX_DEPENDENCIES]) -> bytes32:
    """
    @notice Publish a release record (Table II.1). The data section is
            abi_encode(merkle_root, vendor_name, publish_time, product, version, file_hash,
            file_link, file_name, file_size, supported_hardware, dependencies) with the
            publish time taken from the block; the header is
            abi_encode(block_length, format_version, prev_hash, keccak256(data)) and its
            keccak256 is the record's header hash.
    @param format_version record format version (1)
    @param prev_hash header hash of the product line's current head (zero for the first)
    @param merkle_root Merkle root of the image chunks
    @param vendor_name must be the caller's registered name
    @param product the product line (software component) name
    @param version packed major << 32 | minor << 16 | patch, above the head's version
    @param file_hash SHA-256 of the image file
    @param file_link where the image can be fetched
    @param file_name the image file's name
    @param file_size the image size in bytes, non-zero
    @param supported_hardware registered hardware class ids
    @param dependencies (product, min, max) version ranges the release requires
    @return the new record's header hash
    """
    name_hash: bytes32 = self.vendor_name_hash[msg.sender]
    assert name_hash != empty(bytes32), "sender is not an active vendor"
    assert keccak256(vendor_name) == name_hash, "vendor name does not match the sender"
    assert format_version == FORMAT_VERSION, "unsupported record format version"
    assert len(product) > 0, "empty product name"
    assert file_size > 0, "file size is zero"
    assert len(supported_hardware) > 0, "no supported hardware"
    for hw: String[64] in supported_hardware:
        assert self.hardware[keccak256(hw)].registered, "unknown hardware class"
    for dep: Dependency in dependencies:
        assert len(dep.product) > 0 and dep.min_version <= dep.max_version, "bad dependency range"

    line: bytes32 = keccak256(abi_encode(vendor_name, product))
    if prev_hash == empty(bytes32):
        assert self.line_vendor[line] == empty(bytes32), "previous header hash is not the head of the product line"
        self.line_vendor[line] = name_hash
    else:
        prev: uint256 = self.releases[line][prev_hash]
        assert prev & HEAD != 0, "previous header hash is not the head of the product line"
        assert convert(version, uint256) > prev >> 8, "version not above the head's version"
        self.releases[line][prev_hash] = prev ^ HEAD

    data: Bytes[3872] = abi_encode(merkle_root, vendor_name, block.timestamp, product, version,
                                   file_hash, file_link, file_name, file_size,
                                   supported_hardware, dependencies)
    header_hash: bytes32 = keccak256(abi_encode(len(data), format_version, prev_hash, keccak256(data)))
    self.releases[line][header_hash] = (convert(version, uint256) << 8) | HEAD | EXISTS
    log Published(line=line, header_hash=header_hash, prev_hash=prev_hash, data=data)
    return header_hash


@internal
def _vendor_or_admin(line: bytes32, vendor_name: String[64], action: bytes32) -> bool:
    """
    @dev True to act now: the caller is the line's active vendor, or the k-th administrator.
    """
    if self.vendor_name_hash[msg.sender] == keccak256(vendor_name) and keccak256(vendor_name) != empty(bytes32):
        return True
    assert self.admins[msg.sender], "caller is neither the release's vendor nor an administrator"
    return self._approve(action)


@external
def revoke(vendor_name: String[64], product: String[64], header_hash: bytes32, reason: String[256]):
    """
    @notice Revoke a release, by its vendor at once or by the administration (k of n).
            A revoked head still anchors its line: the next release chains to it.
    @param vendor_name the release's vendor
    @param product the release's product line
    @param header_hash the release's header hash
    @param reason why, in words (non-empty)
    """
    line: bytes32 = keccak256(abi_encode(vendor_name, product))
    entry: uint256 = self.releases[line][header_hash]
    assert entry & EXISTS != 0, "unknown release"
    assert entry & REVOKED == 0, "release already revoked"
    assert len(reason) > 0, "empty revocation reason"
    if not self._vendor_or_admin(line, vendor_name, keccak256(abi_encode(ACT_REVOKE_RELEASE, line, header_hash, reason))):
        return
    self.releases[line][header_hash] = entry | REVOKED
    log Revoked(line=line, header_hash=header_hash, by=msg.sender, reason=reason)


@external
def mark_vulnerable(vendor_name: String[64], product: String[64], header_hash: bytes32, note: String[256]):
    """
    @notice Flag a release as vulnerable (R10.b.ii), by its vendor or the administration (k of n).
    @param vendor_name the release's vendor
    @param product the release's product line
    @param header_hash the release's header hash
    @param note advisory text (CVE id, ...)
    """
    line: bytes32 = keccak256(abi_encode(vendor_name, product))
    entry: uint256 = self.releases[line][header_hash]
    assert entry & EXISTS != 0, "unknown release"
    assert entry & VULNERABLE == 0, "release already flagged vulnerable"
    if not self._vendor_or_admin(line, vendor_name, keccak256(abi_encode(ACT_MARK_VULNERABLE, line, header_hash, note))):
        return
    self.releases[line][header_hash] = entry | VULNERABLE
    log MarkedVulnerable(line=line, header_hash=header_hash, by=msg.sender, note=note)


@pure
@external
def line_id(vendor_name: String[64], product: String[64]) -> bytes32:
    """
    @notice The product line id: keccak256(abi_encode(vendor_name, product)).
    """
    return keccak256(abi_encode(vendor_name, product))


@pure
@external
def format_version() -> uint8:
    """
    @notice The record format version this registry accepts.
    """
    return FORMAT_VERSION
